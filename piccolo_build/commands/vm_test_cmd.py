"""``piccolo-build vm-test``: the acceptance scenarios in QEMU virtual machines, on the stand-in machine the
project builds (in each boot model, :mod:`piccolo_build.vm.models`) or around a real ``qemu_uefi`` image
(:mod:`piccolo_build.vm`, docs/vm-test.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from piccolo_build.commands.config_cmd import ConfigOption, SetOption, load_for_cli
from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from piccolo_build.vm.runner import Outcome

OUT = Path("build/vm-test")  # per-scenario logs (kept for failures and with --keep); CI uploads it
# --image only, opt-in: a real payload from the previous release (docs/vm-test.md)
REAL_UPDATE = "real-update"
IMAGE_SCENARIOS = ("healthy-boot", REAL_UPDATE)


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
        jobs_file: Annotated[
            Path | None,
            typer.Option(
                "--jobs-file",
                dir_okay=False,
                help="Read the VMs at once from this file before each start (a caller sharing the host "
                "raises it while the run goes on); --jobs while it is missing or unreadable.",
            ),
        ] = None,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Write every outcome as JSON here.", dir_okay=False)
        ] = None,
        out: Annotated[Path, typer.Option("--out", help="Run directories and logs.", file_okay=False)] = OUT,
        cache: Annotated[
            Path | None, typer.Option("--cache", help="Stand-in cache (default $PICCOLO_TEST_CACHE/vm).")
        ] = None,
        previous_image: Annotated[
            Path | None,
            typer.Option(
                "--previous-image",
                help=f"--scenario {REAL_UPDATE}: the previous release's qemu_uefi directory, booted and "
                "updated to --image's payload.",
            ),
        ] = None,
        to_version: Annotated[
            str | None,
            typer.Option(
                "--to-version",
                help=f"--scenario {REAL_UPDATE}: the version --image's payload installs "
                "(default: FLATCAR_VERSION in its version.txt).",
            ),
        ] = None,
        config: ConfigOption = None,
        sets: SetOption = None,
    ) -> None:
        """Boot Piccolo OS in QEMU and run the acceptance scenarios: healthy boot, docker stopped, a healthy
        and a broken update, a crash before userspace, two disks, on the stand-in in each boot model; on a
        real image (--image) a healthy boot, and on request (--scenario real-update) the previous release
        updated to --image's payload. One line per scenario; exit 1 when one fails."""
        from piccolo_build.vm import models, qemu, report, runner, scenarios, standin

        if list_:
            for sc in scenarios.SCENARIOS:
                typer.echo(f"{sc.name:<24} {sc.title}")
            typer.echo(f"{REAL_UPDATE:<24} a real update payload with flatcar-update -P "
                       "(--image with --previous-image only)")  # fmt: skip
            for m in models.MODELS:
                typer.echo(f"model {m.name:<8} Debian {m.suite:<7} {m.initrd} initrd: {m.description}")
            return
        names = _names(scenario, image is not None, [*scenarios.BY_NAME], previous_image, to_version)
        wanted = _models(model, image is not None)
        runs = _image_runs(image, names, previous_image, to_version) if image is not None else []
        out = out.resolve()  # every input checked (the image's artefacts too): now write
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with _sigterm_interrupts():  # a CI job cancelled, or the suite ending: no VM outlives the run
            if image is not None:
                # no kernel of ours to probe with: KVM when the node opens (CI runners), else TCG
                kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
                chosen = accel.value if accel is not Accel.AUTO else ("kvm" if kvm else "tcg")
                outcomes = [_image_run(name, fn, out, chosen, keep) for name, fn in runs]
            else:
                cfg = load_for_cli(config, sets)
                where = (cache or standin.default_cache()).resolve()
                built = []
                for name in wanted:  # every model's stand-in first: then one pool runs all their scenarios
                    m = models.BY_NAME[name]
                    typer.echo(f"model {m.name}: {m.description}")
                    typer.echo(f"stand-in ({m.name}): building or reusing in {where}")
                    s = standin.build(cfg, where, model=m, say=_prefixed(f"  {m.name}: "))
                    typer.echo(
                        f"stand-in {m.name}-{s.key}: {'built' if s.built else 'cached'} in {s.seconds:.0f}s"
                    )
                    built.append(s)
                chosen, why = qemu.choose_accel(built[0].vmlinuz, built[0].initrd, out, accel.value)
                typer.echo(f"accelerator: {chosen} ({why})")
                outcomes = runner.run_scenarios(
                    built, [scenarios.BY_NAME[n] for n in names], out, chosen,
                    jobs=_jobs(jobs, jobs_file), keep=keep, say=typer.echo,
                )  # fmt: skip
        failed = [o for o in outcomes if not o.ok]
        passed = len(outcomes) - len(failed)
        typer.echo(f"{passed} of {len(outcomes)} passed in {time.monotonic() - t0:.0f}s ({chosen})")
        if junit is not None:
            report.junit(outcomes, junit)
        if tap is not None:
            tap.parent.mkdir(parents=True, exist_ok=True)
            tap.write_text(report.tap(outcomes))
        if json_out is not None:
            report.json_file(outcomes, json_out)
        if failed:
            raise typer.Exit(1)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM as Ctrl-C: the runner then ends every machine it started (QEMU and swtpm run in sessions
    of their own, so a signal to this process's group would not reach them)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _jobs(default: int, path: Path | None) -> int | Callable[[], int]:
    if path is None:
        return default

    def now() -> int:
        try:
            return max(1, min(8, int(path.read_text().strip())))
        except (OSError, ValueError):
            return default

    return now


def _names(
    asked: list[str] | None,
    with_image: bool,
    standin: list[str],
    previous_image: Path | None,
    to_version: str | None,
) -> list[str]:
    """The scenarios to run; every misuse of the options is one line (exit 2)."""
    known = [*IMAGE_SCENARIOS] if with_image else standin
    names = asked or (["healthy-boot"] if with_image else standin)
    for n in names:
        if n == REAL_UPDATE and not with_image:
            raise PiccoloError(
                f"--scenario {REAL_UPDATE} runs only on real images",
                hint=f"piccolo-build vm-test --image NEW --previous-image OLD --scenario {REAL_UPDATE}",
            )
        if with_image and n in standin and n not in IMAGE_SCENARIOS:
            raise PiccoloError(f"scenario {n!r} runs only on the stand-in (without --image)",
                               hint=f"with --image: {', '.join(IMAGE_SCENARIOS)}")  # fmt: skip
        if n not in known:
            raise PiccoloError(f"unknown scenario {n!r}", hint=f"one of: {', '.join(known)} (--list)")
    if REAL_UPDATE in names and previous_image is None:
        raise PiccoloError(
            f"--scenario {REAL_UPDATE} needs --previous-image OLD",
            hint="the previous release's qemu_uefi directory, updated to --image's payload",
        )
    if REAL_UPDATE not in names and (previous_image is not None or to_version is not None):
        option = "--previous-image" if previous_image is not None else "--to-version"
        raise PiccoloError(f"{option} is used only by --scenario {REAL_UPDATE}")
    return names


def _models(asked: list[str] | None, with_image: bool) -> list[str]:
    """The boot models to run, in the order asked, once each (default: every model)."""
    from piccolo_build.vm import models

    if with_image and asked:
        raise PiccoloError("--model is for the stand-in; --image boots the image as it is")
    wanted = list(dict.fromkeys(asked or [m.name for m in models.MODELS]))
    bad = [n for n in wanted if n not in models.BY_NAME]
    if bad:
        raise PiccoloError(f"unknown model {bad[0]!r}", hint=f"one of: {', '.join(models.BY_NAME)} (--list)")
    return wanted


def _prefixed(prefix: str) -> Callable[[str], None]:
    return lambda msg: typer.echo(prefix + msg)


def _image_runs(
    image: Path, names: list[str], previous_image: Path | None, to_version: str | None
) -> list[tuple[str, Callable[[Path, str], dict[str, str]]]]:
    """Each scenario on the real image, its artefacts found and checked now (before any VM boots)."""
    from piccolo_build.vm import image as image_mod
    from piccolo_build.vm import payload_update

    runs: list[tuple[str, Callable[[Path, str], dict[str, str]]]] = []
    for name in names:
        if name == REAL_UPDATE:
            assert previous_image is not None  # _names saw to it
            old = image_mod.find_artefacts(previous_image, "--previous-image")
            old_version = payload_update.version_of(previous_image, "--previous-image")
            update = payload_update.find_update(image, to_version)
            if old_version == update.version:
                raise PiccoloError(f"--previous-image {previous_image} is already {update.version}")
            real = partial(
                payload_update.real_update, old, update, previous_version=old_version, say=typer.echo
            )
            runs.append((name, real))
        else:
            art = image_mod.find_artefacts(image)
            runs.append((name, partial(image_mod.healthy_boot, art, say=typer.echo)))
    return runs


def _image_run(
    name: str, fn: Callable[[Path, str], dict[str, str]], out: Path, accel: str, keep: bool
) -> Outcome:
    import shutil

    from piccolo_build.vm.machine import Failed
    from piccolo_build.vm.runner import Outcome, line

    where = out / name
    shutil.rmtree(where, ignore_errors=True)
    t0 = time.monotonic()
    try:
        notes = fn(where, accel)
        o = Outcome(name, True, time.monotonic() - t0, notes=notes)
    except (Failed, PiccoloError) as exc:
        o = Outcome(name, False, time.monotonic() - t0, str(exc), logs=where)
    if not keep:
        (where / "overlay.qcow2").unlink(missing_ok=True)
    if o.ok and not keep:
        shutil.rmtree(where, ignore_errors=True)
    typer.echo(line(o))
    return o
