"""``piccolo-build plan`` (what a full build would do) and ``piccolo-build build`` (do it)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from piccolo_build.commands.config_cmd import ConfigOption, JsonOption, SetOption, config_path, load_for_cli
from piccolo_build.context import DEFAULT_SCRIPTS_URL, DEFAULT_SDK_IMAGE

if TYPE_CHECKING:
    from piccolo_build.config import BuildConfig
    from piccolo_build.context import BuildContext
    from piccolo_build.plan import Facts, Step
    from piccolo_build.releases import Verdict
    from piccolo_build.tree import TreeFacts

WorkDirOption = Annotated[
    Path, typer.Option("--work-dir", "-w", help="Build directory: checkout, logs, state.", file_okay=False)
]
ScriptsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--scripts-dir",
        help="The flatcar/scripts checkout to use (cloned there when absent; default WORK_DIR/scripts).",
        file_okay=False,
    ),
]
ScriptsUrlOption = Annotated[str, typer.Option("--scripts-url", help="Where to clone flatcar/scripts from.")]
SdkImageOption = Annotated[
    str, typer.Option("--sdk-image", help="SDK container image repository (tag: flatcar.sdk_version).")
]
NoImageCheckOption = Annotated[
    bool,
    typer.Option(
        "--no-sdk-image-check",
        help="Do not check the SDK image through the Docker API first (run_sdk_container pulls it itself).",
    ),
]
UpdateSigningKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--update-signing-key",
        help="PEM private key the update payloads are signed with for release.update_key (default: "
        "$PICCOLO_UPDATE_SIGNING_KEY); read in the release step, never copied or logged.",
        dir_okay=False,
    ),
]
ProductionOption = Annotated[
    bool,
    typer.Option(
        "--production",
        help="Refuse (exit 2, also with --dry-run) unless release.update_key is set: production images "
        "must not trust Flatcar's development key.",
    ),
]
MirrorOption = Annotated[
    str | None,
    typer.Option(
        "--distfiles-mirror",
        help="Download missing locked sdists from this mirror of https://files.pythonhosted.org/packages/.",
    ),
]


def facts(cfg: BuildConfig) -> Facts:
    """What the plan takes from the overlay and bundle modules."""
    from piccolo_build import bundle, lock
    from piccolo_build.overlay import BASE_CATEGORY, BASE_NAME
    from piccolo_build.plan import Facts

    agent = f"{cfg.package.category}/{cfg.package.name}"
    locked = lock.load_lock()
    return Facts(
        sysext_name=bundle.SYSEXT_NAME,
        sysext_packages=bundle.sysext_packages(locked, agent),
        rdepend_atom=f"{BASE_CATEGORY}/{BASE_NAME}",
        agent_atom=agent,
        distfiles=tuple(p.filename for p in locked.packages),
        lock_file=lock.LOCK_NAME,
        agent_version=cfg.version,
    )


def _context(
    config: Path | None,
    work_dir: Path,
    scripts_dir: Path | None,
    scripts_url: str,
    sdk_image: str,
    *,
    update_signing_key: Path | None = None,
) -> BuildContext:
    from piccolo_build.context import BuildContext
    from piccolo_build.signing import signing_key_path

    return BuildContext(
        work_dir=work_dir,
        scripts_dir_override=scripts_dir,
        scripts_url=scripts_url,
        sdk_image_repo=sdk_image,
        config_file=config_path(config),
        update_signing_key=signing_key_path(update_signing_key),
    )


def refuse_development_key(cfg: BuildConfig) -> None:
    """``--production``: a user error when the images would trust Flatcar's development key."""
    from piccolo_build.errors import PiccoloError

    if cfg.release.update_key is None:
        raise PiccoloError(
            "--production: release.update_key is not set, the images would trust Flatcar's development "
            "key, whose private half is public",
            hint="make an update key pair (docs/release.md) and set release.update_key to its public key",
        )


def development_key_warning(cfg: BuildConfig) -> None:
    """The one loud line, on stderr, when the images will trust Flatcar's development key."""
    from piccolo_build.signing import DEVELOPMENT_KEY_WARNING

    if cfg.release.update_key is None:
        typer.echo(f"warning: {DEVELOPMENT_KEY_WARNING}", err=True)


def _steps(cfg: BuildConfig, ctx: BuildContext, f: Facts, tree: TreeFacts | None = None) -> list[Step]:
    from piccolo_build.errors import PiccoloError
    from piccolo_build.plan import plan

    try:
        return plan(cfg, ctx, f, tree)
    except ValueError as exc:
        raise PiccoloError(f"cannot plan the build: {exc}") from None


def checkout_facts(ctx: BuildContext) -> TreeFacts | None:
    """The facts of the checkout at ``--scripts-dir`` when there is one (its files, as they are now)."""
    from piccolo_build.tree import BUILD_IMAGE, read_tree_facts

    return read_tree_facts(ctx.scripts_dir) if (ctx.scripts_dir / BUILD_IMAGE).is_file() else None


def judge(ctx: BuildContext, f: Facts, tree: TreeFacts | None) -> Verdict | None:
    """The verdict on the checkout (None without one)."""
    from piccolo_build import releases

    return None if tree is None else releases.judge_checkout(ctx.scripts_dir, f, tree)


def compile_line(c: dict[str, Any]) -> str:
    """One package of the compile list (its JSON form) as ``plan`` prints it."""
    line = f"{c['package']}-{c['version']} ({c['origin']})"
    if c["needs"]:
        line += ": needs " + "; ".join(c["needs"])
    if c["problems"]:
        line += "; MISSING: " + "; ".join(c["problems"])
    return line


def environment() -> dict[str, Any]:
    """The environment every step runs with (piccolo_build.run's sanitised base environment)."""
    from piccolo_build.run import PASSTHROUGH

    return {"passthrough": list(PASSTHROUGH), "defaults": {"LC_ALL": "C.UTF-8"}}


def sdk_summary(cfg: BuildConfig, ctx: BuildContext) -> dict[str, Any]:
    """The SDK version and image the build uses (the version may only be known after the checkout)."""
    from piccolo_build.plan import sdk_image_label, sdk_version_label

    return {
        "version": sdk_version_label(cfg),
        "source": "flatcar.sdk_version" if cfg.flatcar.sdk_version else str(ctx.version_file),
        "image": sdk_image_label(cfg, ctx),
    }


def render_plan(
    steps: list[Step], sdk: dict[str, Any] | None = None, tree: dict[str, Any] | None = None
) -> str:
    from piccolo_build.run import PASSTHROUGH

    out = []
    if sdk is not None:
        out.append(f"SDK version: {sdk['version']} ({sdk['source']}); image {sdk['image']}")
    if tree is not None and "facts" in tree:
        out.append("read from the checkout: " + ", ".join(f"{k}={v}" for k, v in tree["facts"].items()))
        verdict = tree.get("verdict")
        if verdict is not None:
            out.append(
                f"this release {'builds' if verdict['builds'] else 'does NOT build'}: {verdict['reason']}"
            )
            if verdict["compiles"]:
                out.append(
                    "sysext-packages compiles from source (Flatcar publishes no binary package of them):"
                )
                out.extend(f"  {compile_line(c)}" for c in verdict["compiles"])
    elif tree is not None:
        out.append("read from the checkout once there is one:")
        out.extend(f"  {line}" for line in tree["read_after_checkout"])
    out.append(
        f"environment of every step: only {' '.join(PASSTHROUGH)} are passed through (when set), "
        "LC_ALL defaults to C.UTF-8, plus the step's own env lines below"
    )
    for i, s in enumerate(steps, 1):
        flags = ", ".join(x for x in (str(s.action), s.board or "", "always" if s.always else "") if x)
        out.append(f"{i:2}. {s.name} ({flags})")
        out.append(f"    {s.description}")
        if s.argv:
            out.append(f"    $ {shlex.join(s.argv)}")
        if s.cwd:
            out.append(f"    cwd: {s.cwd}")
        for k, v in s.env:
            out.append(f"    env: {k}={v}")
        if s.inputs:
            out.append(f"    inputs: {' '.join(s.inputs)}")
        if s.outputs:
            out.append(f"    outputs: {' '.join(s.outputs)}")
    return "\n".join(out) + "\n"


def _resume(ctx: BuildContext, config: Path | None, sets: list[str] | None) -> str:
    """The ``piccolo-build build`` command line that repeats this build's options (for --from hints)."""
    argv = ["piccolo-build", "build"]
    if config is not None:
        argv += ["--config", str(config)]
    for item in sets or ():
        argv += ["--set", item]
    if ctx.work_dir != Path("build"):
        argv += ["--work-dir", str(ctx.work_dir)]
    if ctx.scripts_dir_override is not None:
        argv += ["--scripts-dir", str(ctx.scripts_dir_override)]
    if ctx.scripts_url != DEFAULT_SCRIPTS_URL:
        argv += ["--scripts-url", ctx.scripts_url]
    if ctx.sdk_image_repo != DEFAULT_SDK_IMAGE:
        argv += ["--sdk-image", ctx.sdk_image_repo]
    if ctx.allow_pull:
        argv.append("--pull")
    if not ctx.check_sdk_image:
        argv.append("--no-sdk-image-check")
    if ctx.distfiles_mirror is not None:
        argv += ["--distfiles-mirror", ctx.distfiles_mirror]
    if ctx.require_signature:
        argv.append("--require-signature")
    if ctx.update_signing_key is not None:
        argv += ["--update-signing-key", str(ctx.update_signing_key)]
    return shlex.join(argv)


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        *,
        config: ConfigOption = None,
        sets: SetOption = None,
        as_json: JsonOption = False,
        work_dir: WorkDirOption = Path("build"),
        scripts_dir: ScriptsDirOption = None,
        scripts_url: ScriptsUrlOption = DEFAULT_SCRIPTS_URL,
        sdk_image: SdkImageOption = DEFAULT_SDK_IMAGE,
        distfiles_mirror: MirrorOption = None,
        update_signing_key: UpdateSigningKeyOption = None,
    ) -> None:
        """Print the ordered steps of a full build (commands, directories, inputs, outputs); run nothing."""
        cfg = load_for_cli(config, sets)
        ctx = dataclasses.replace(
            _context(
                config, work_dir, scripts_dir, scripts_url, sdk_image, update_signing_key=update_signing_key
            ),
            distfiles_mirror=distfiles_mirror,
        )
        from piccolo_build.plan import tree_summary

        tree = checkout_facts(ctx)
        f = facts(cfg)
        steps = _steps(cfg, ctx, f, tree)
        sdk = sdk_summary(cfg, ctx)
        summary = tree_summary(tree, judge(ctx, f, tree))
        if as_json:
            from piccolo_build.signing import DEVELOPMENT_KEY_WARNING

            doc = {
                "warnings": [] if cfg.release.update_key else [DEVELOPMENT_KEY_WARNING],
                "environment": environment(),
                "sdk": sdk,
                "tree": summary,
                "steps": [s.to_json() for s in steps],
            }
            typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        else:
            development_key_warning(cfg)
            typer.echo(render_plan(steps, sdk, summary), nl=False)

    @app.command("build")
    def build_cmd(
        *,
        config: ConfigOption = None,
        sets: SetOption = None,
        work_dir: WorkDirOption = Path("build"),
        scripts_dir: ScriptsDirOption = None,
        scripts_url: ScriptsUrlOption = DEFAULT_SCRIPTS_URL,
        sdk_image: SdkImageOption = DEFAULT_SDK_IMAGE,
        from_step: Annotated[
            str | None, typer.Option("--from", help="Start at this step (run it even if done).")
        ] = None,
        to_step: Annotated[str | None, typer.Option("--to", help="Stop after this step.")] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Show which steps would run or be skipped; run nothing.")
        ] = False,
        pull: Annotated[
            bool, typer.Option("--pull", help="Pull the SDK image when it is not present locally.")
        ] = False,
        no_sdk_image_check: NoImageCheckOption = False,
        distfiles_mirror: MirrorOption = None,
        require_signature: Annotated[
            bool,
            typer.Option(
                "--require-signature",
                help="Fail in preflight when release.signing_key is null, or when release.update_key is set "
                "and no update signing key is given (for release pipelines).",
            ),
        ] = False,
        production: ProductionOption = False,
        update_signing_key: UpdateSigningKeyOption = None,
    ) -> None:
        """Run the build: flatcar/scripts checkout, overlay, SDK steps per board, signed release."""
        from piccolo_build.sdk import Executor, Options

        cfg = load_for_cli(config, sets)
        if production:
            refuse_development_key(cfg)
        ctx = dataclasses.replace(
            _context(
                config, work_dir, scripts_dir, scripts_url, sdk_image, update_signing_key=update_signing_key
            ),
            allow_pull=pull,
            check_sdk_image=not no_sdk_image_check,
            distfiles_mirror=distfiles_mirror,
            require_signature=require_signature,
        )
        f = facts(cfg)
        # A dry run checks nothing out: it judges the SDK steps by the checkout as it is (if any).
        steps = _steps(cfg, ctx, f, checkout_facts(ctx) if dry_run else None)

        def replan(tree: TreeFacts) -> list[Step]:
            return _steps(cfg, ctx, f, tree)

        options = Options(
            from_step=from_step,
            to_step=to_step,
            dry_run=dry_run,
            resume=_resume(ctx, config, sets),
        )
        outcomes = Executor(cfg, ctx, f, steps, sys.stderr, replan=replan).execute(options)
        ran = sum(o.status == "ran" for o in outcomes)
        skipped = sum(o.status == "skipped" for o in outcomes)
        if not dry_run:
            where = (
                cfg.release.output_dir if (to_step is None or to_step == steps[-1].name) else str(work_dir)
            )
            typer.echo(f"build finished: {ran} steps ran, {skipped} skipped; output in {where}")
        development_key_warning(cfg)
