"""``piccolo-build render`` (write the overlay tree) and ``piccolo-build check`` (verify it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from piccolo_build.commands.config_cmd import ConfigOption, JsonOption, SetOption, load_for_cli
from piccolo_build.commands.monitoring_cmd import DEFAULT_OUTPUT as DEFAULT_MONITORING
from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from piccolo_build.config import BuildConfig
    from piccolo_build.overlay import OverlayFile

DEFAULT_OUTPUT = Path("overlays")
WORKFLOW = Path(".github/workflows/piccolo.yml")  # piccolo_build.ci.workflow.DEFAULT_PATH


def plan(cfg: BuildConfig, tree: Path | None = None) -> list[OverlayFile]:
    """The overlay files for ``cfg`` (rendered for the checkout ``tree``'s Python when given); a value
    that cannot be rendered is a user error."""
    from piccolo_build.gentoo import PYTHON_COMPAT
    from piccolo_build.overlay import overlay_files
    from piccolo_build.quoting import UnsafeValue

    try:
        return overlay_files(cfg, tree_python_compat(tree) if tree is not None else PYTHON_COMPAT)
    except (UnsafeValue, ValueError) as exc:
        raise PiccoloError(f"cannot render: {exc}", hint="fix the value in the configuration") from None


def register(app: typer.Typer) -> None:
    @app.command("render")
    def render(
        config_file: ConfigOption = None,
        sets: SetOption = None,
        output: Annotated[
            Path, typer.Option("--output", "-o", help="Overlay directory to write.")
        ] = DEFAULT_OUTPUT,
        as_json: JsonOption = False,
    ) -> None:
        """Render the Flatcar overlay (ebuilds, units, policy) into DIR atomically.

        DIR is replaced whole, so it must be new, empty or a previous render (it has a .piccolo-overlay
        file); anything else is refused untouched. A symlink is followed.
        """
        from piccolo_build.render import write_tree

        files = plan(load_for_cli(config_file, sets))
        try:
            changed = write_tree(files, output)
        except OSError as exc:
            raise PiccoloError(f"cannot write {output}: {exc.strerror or exc}") from None
        if as_json:
            typer.echo(json.dumps({"output": str(output), "files": len(files), "changed": changed}))
        else:
            typer.echo(f"{output}: {len(files)} files, {'updated' if changed else 'unchanged'}")

    @app.command("check")
    def check(  # noqa: PLR0917 - Typer passes every option by keyword
        config_file: ConfigOption = None,
        sets: SetOption = None,
        overlay: Annotated[
            Path, typer.Option("--overlay", help="Committed overlay to compare against.")
        ] = DEFAULT_OUTPUT,
        monitoring: Annotated[
            Path,
            typer.Option("--monitoring", help="Committed alert rules and dashboard to compare against."),
        ] = DEFAULT_MONITORING,
        tree: Annotated[
            Path | None,
            typer.Option(
                "--tree",
                help="Instead: pkgcheck the rendered packages inside the real coreos-overlay of the "
                "flatcar/scripts checkout DIR (portage-stable as master, board profiles; DIR stays "
                "untouched).",
                file_okay=False,
                metavar="DIR",
            ),
        ] = None,
        workflow: Annotated[
            Path,
            typer.Option(
                "--workflow",
                help="The CI workflow `piccolo-build ci init` wrote: it must equal a fresh one (checked "
                "when the file exists and says it was generated).",
                dir_okay=False,
            ),
        ] = WORKFLOW,
        as_json: JsonOption = False,
    ) -> None:
        """Fail if OVERLAY, MONITORING or the generated CI workflow differs from a fresh render; verify
        units, lint ebuilds, check the alert rules with promtool."""
        from piccolo_build.check import Step, check_overlay
        from piccolo_build.ci import workflow as ci_workflow
        from piccolo_build.commands.monitoring_cmd import plan as monitoring_plan
        from piccolo_build.monitoring.verify import check_monitoring

        cfg = load_for_cli(config_file, sets)
        if tree is not None:
            tree_check(tree, plan(cfg, tree), [b.arch for b in cfg.boards], as_json=as_json)
            return
        report = check_overlay(cfg, plan(cfg), overlay)
        report.steps.extend(check_monitoring(monitoring_plan(cfg), monitoring))
        if ci_workflow.is_generated(workflow):
            diff = ci_workflow.drift(cfg, workflow)
            report.steps.append(Step(f"workflow {workflow}", not diff, diff))
        if as_json:
            typer.echo(json.dumps(report.to_json(), indent=2))
        else:
            for step in report.steps:
                typer.echo(
                    f"{'ok  ' if step.ok else 'FAIL'} {step.name}"
                    + (f"\n{step.output}" if step.output else "")
                )
        if not report.ok:
            failed = ", ".join(s.name for s in report.steps if not s.ok)
            raise PiccoloError(
                f"check failed: {failed}",
                hint="run `piccolo-build render` (overlay), `piccolo-build monitoring` (monitoring) or "
                "`piccolo-build ci init` (workflow) if the diff is intended",
                exit_code=1,
            )


def tree_check(tree: Path, files: list[OverlayFile], arches: list[str], *, as_json: bool) -> None:
    """``check --tree`` (and ``lock --tree``): one line per pkgcheck finding, exit 1 when there is any."""
    import time

    from piccolo_build.treecheck import check_tree

    if not tree.is_dir():
        raise PiccoloError(f"--tree {tree}: no such directory")
    started = time.monotonic()
    result = check_tree(tree, files, arches, pkgcheck_cache())
    seconds = time.monotonic() - started
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "findings": list(result.findings),
                    "packages": list(result.packages),
                    "profiles": list(result.profiles),
                    "seconds": round(seconds, 1),
                }
            )
        )
    else:
        for line in result.findings:
            typer.echo(line)
        typer.echo(
            f"{'ok' if result.ok else 'FAIL'}: {len(result.packages)} packages in {tree} under "
            f"{', '.join(result.profiles)}: {len(result.findings)} findings ({seconds:.1f} s)"
        )
    if not result.ok:
        raise typer.Exit(1)


def tree_python_compat(tree: Path) -> str:
    """``PYTHON_COMPAT`` for the checkout ``tree``: the Python its board profiles build."""
    from piccolo_build.tree import read_python_targets

    if not tree.is_dir():
        raise PiccoloError(f"--tree {tree}: no such directory")
    return " ".join(read_python_targets(tree))


def pkgcheck_cache() -> Path:
    """pkgcheck's cache for checks outside a build: under $XDG_CACHE_HOME (or ~/.cache)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path("~/.cache").expanduser()) / "piccolo-build" / "pkgcheck"
