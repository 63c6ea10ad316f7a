"""``piccolo-build vm-test``: the acceptance scenarios in QEMU virtual machines, on the stand-in machine the
project builds (in each boot model, :mod:`piccolo_build.vm.models`) or around a real ``qemu_uefi`` image
(:mod:`piccolo_build.vm`, docs/vm-test.md)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from piccolo_build.commands.config_cmd import ConfigOption, SetOption, load_for_cli
from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from piccolo_build.vm.image import Artefacts
    from piccolo_build.vm.runner import Outcome

OUT = Path("build/vm-test")  # per-scenario logs (kept for failures and with --keep); CI uploads it


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


def register(app: typer.Typer) -> None:
    @app.command("vm-test")
    def vm_test(  # noqa: PLR0917 - Typer passes every option by keyword
        image: Annotated[
            Path | None, typer.Option("--image", help="A qemu_uefi build's directory; default: the stand-in.")
        ] = None,
        scenario: Annotated[
            list[str] | None, typer.Option("--scenario", help="Run only this scenario (repeatable).")
        ] = None,
        junit: Annotated[
            Path | None, typer.Option("--junit", help="Write JUnit XML here.", dir_okay=False)
        ] = None,
        tap: Annotated[Path | None, typer.Option("--tap", help="Write TAP here.", dir_okay=False)] = None,
        keep: Annotated[
            bool, typer.Option("--keep", help="Keep every run directory, disks included.")
        ] = False,
        model: Annotated[
            list[str] | None,
            typer.Option(
                "--model", help="Boot model of the stand-in: late, initrd (repeatable; default both)."
            ),
        ] = None,
        list_: Annotated[
            bool, typer.Option("--list", help="List the scenarios and models, and exit.")
        ] = False,
        accel: Annotated[
            Accel, typer.Option("--accel", help="auto: KVM if a probe boot works, else TCG.")
        ] = Accel.AUTO,
        jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=8, help="VMs at once.")] = 2,
        out: Annotated[Path, typer.Option("--out", help="Run directories and logs.", file_okay=False)] = OUT,
        cache: Annotated[
            Path | None, typer.Option("--cache", help="Stand-in cache (default $PICCOLO_TEST_CACHE/vm).")
        ] = None,
        config: ConfigOption = None,
        sets: SetOption = None,
    ) -> None:
        """Boot Piccolo OS in QEMU and run the acceptance scenarios: healthy boot, docker stopped, a healthy
        and a broken update, a crash before userspace, two disks. One line per scenario; exit 1 when one
        fails."""
        from piccolo_build.vm import image as image_mod
        from piccolo_build.vm import models, qemu, report, runner, scenarios, standin

        if list_:
            for sc in scenarios.SCENARIOS:
                typer.echo(f"{sc.name:<24} {sc.title}")
            for m in models.MODELS:
                typer.echo(f"model {m.name:<8} Debian {m.suite:<7} {m.initrd} initrd: {m.description}")
            return
        names = scenario or [sc.name for sc in scenarios.SCENARIOS]
        unknown = [n for n in names if n not in scenarios.BY_NAME]
        if unknown:
            raise PiccoloError(
                f"unknown scenario {unknown[0]!r}", hint=f"one of: {', '.join(scenarios.BY_NAME)} (--list)"
            )
        wanted = list(dict.fromkeys(model or [m.name for m in models.MODELS]))  # in order, once each
        bad = [n for n in wanted if n not in models.BY_NAME]
        if bad:
            raise PiccoloError(
                f"unknown model {bad[0]!r}", hint=f"one of: {', '.join(models.BY_NAME)} (--list)"
            )
        if image is not None and model:
            raise PiccoloError("--model is for the stand-in; --image boots the image as it is")
        out = out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        if image is not None:
            art = image_mod.find_artefacts(image)
            # no kernel of ours to probe with: KVM when the node opens (CI runners), else TCG
            kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
            chosen = accel.value if accel is not Accel.AUTO else ("kvm" if kvm else "tcg")
            outcomes = [_image_run(art, out, chosen, keep)]
        else:
            cfg = load_for_cli(config, sets)
            where = (cache or standin.default_cache()).resolve()
            outcomes = []
            chosen = accel.value
            for name in wanted:  # one model after the other: each runs its scenarios on its own stand-in
                m = models.BY_NAME[name]
                typer.echo(f"model {m.name}: {m.description}")
                typer.echo(f"stand-in ({m.name}): building or reusing in {where}")
                s = standin.build(cfg, where, model=m, say=_prefixed(f"  {m.name}: "))
                typer.echo(
                    f"stand-in {m.name}-{s.key}: {'built' if s.built else 'cached'} in {s.seconds:.0f}s"
                )
                chosen, why = qemu.choose_accel(s.vmlinuz, s.initrd, out, accel.value)
                typer.echo(f"accelerator: {chosen} ({why})")
                outcomes += runner.run_scenarios(
                    s, [scenarios.BY_NAME[n] for n in names], out / m.name, chosen, jobs=jobs, keep=keep,
                    say=typer.echo,
                )  # fmt: skip
        failed = [o for o in outcomes if not o.ok]
        passed = len(outcomes) - len(failed)
        typer.echo(f"{passed} of {len(outcomes)} passed in {time.monotonic() - t0:.0f}s ({chosen})")
        if junit is not None:
            report.junit(outcomes, junit)
        if tap is not None:
            tap.parent.mkdir(parents=True, exist_ok=True)
            tap.write_text(report.tap(outcomes))
        if failed:
            raise typer.Exit(1)


def _prefixed(prefix: str) -> Callable[[str], None]:
    return lambda msg: typer.echo(prefix + msg)


def _image_run(art: Artefacts, out: Path, accel: str, keep: bool) -> Outcome:
    import shutil

    from piccolo_build.vm import image as image_mod
    from piccolo_build.vm.machine import Failed
    from piccolo_build.vm.runner import Outcome, line

    where = out / "healthy-boot"
    t0 = time.monotonic()
    try:
        notes = image_mod.healthy_boot(art, where, accel, typer.echo)
        o = Outcome("healthy-boot", True, time.monotonic() - t0, notes=notes)
    except (Failed, PiccoloError) as exc:
        o = Outcome("healthy-boot", False, time.monotonic() - t0, str(exc), logs=where)
    if not keep:
        (where / "overlay.qcow2").unlink(missing_ok=True)
    if o.ok and not keep:
        shutil.rmtree(where, ignore_errors=True)
    typer.echo(line(o))
    return o
