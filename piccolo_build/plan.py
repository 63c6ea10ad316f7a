"""The ordered steps of a full build, computed without running anything (``piccolo-build plan``).

A :class:`Step` is either an SDK command (argv, working directory, extra environment) or an internal
action that piccolo-build does itself in Python (copy the overlay in, edit RDEPEND, collect, sign); both
kinds name their inputs and outputs, so ``plan`` shows the whole build. The executor
(:mod:`piccolo_build.sdk`) runs exactly this list.

The SDK commands follow flatcar/scripts (docs/flatcar.md; flag spellings from the usage texts of
``run_sdk_container``, ``build_packages``, ``build_image`` and ``image_to_vm.sh``). What differs from
release to release is read from the checkout (:class:`~piccolo_build.tree.TreeFacts`): without a
checkout the plan says what it will read, and the build plans again right after the checkout.

- ``./run_sdk_container [-C IMAGE] [-V SDK_VERSION] -a all -- CMD`` runs CMD in the SDK container.
  Without ``flatcar.sdk_version`` there is no ``-V``: the script takes ``FLATCAR_SDK_VERSION`` from the
  checked-out tag's ``version.txt``, and so does the ``sdk-image`` check after the checkout.
  No ``-n``: the script then names the container after the SDK and OS versions of the checkout, so a
  new Flatcar tag never reuses a container set up for an older one, while the steps of one build share
  it (the board roots and binary packages live inside it). No ``-t``: output is piped into the build
  log, and ``docker exec -t`` refuses to run without a terminal.
- ``./build_packages --board=<board>`` first: its defaults are ``--usepkg --getbinpkg``, so every package
  Flatcar publishes is fetched as a binary; only what our overlay changes (``coreos-base/coreos`` with
  its new revision, ``coreos-base/piccolo-base``) is built.
- ``emerge-<board> --usepkg --getbinpkg --with-bdeps=y --buildpkg <sysext packages>`` next: build_image's
  sysext builder installs the sysext's packages with ``--usepkgonly``, so a binary package of each (and
  of every dependency) must exist. Flatcar's binhost has what Flatcar builds (the interpreter); our
  packages and the dependencies no Flatcar package needs (cffi, cryptography with Rust, pycparser) are
  compiled here once (:func:`piccolo_build.treedeps.compiles` lists them per tag). After
  build_packages, whose closing ``eclean-<board> -d`` would delete binary packages of anything not
  installed in the board root.
- ``./build_image --board=<board> --group=<update group> --base_sysexts=<list> --replace [flags] prod
  [oem_sysext]`` (``--replace`` so that a resumed build may overwrite the image directory of a failed
  attempt; ``oem_sysext`` and ``--oem_sysexts=<name>`` when image_to_vm.sh wants the qemu OEM sysext
  prebuilt; ``--generate_update`` where build_image does not make the update payload by default);
- ``./image_to_vm.sh --from=<images dir in the container> --board=<board> --format=qemu_uefi
  --image_compression_formats=none``: a disk image with A/B USR slots and update_engine (the ISO has
  ``/usr/.noupdate``), left uncompressed for ``collect`` (release_util.sh deletes the originals after
  compressing them otherwise).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from piccolo_build import releases
from piccolo_build.config import BuildConfig
from piccolo_build.context import DEFAULT_SDK_IMAGE, BuildContext
from piccolo_build.tree import READS, TreeFacts

if TYPE_CHECKING:
    from piccolo_build.releases import Verdict

_UNSAFE_IN_SDK = re.compile(r'["$`\\\n]')


class Action(enum.StrEnum):
    """What the executor does for a step: run its argv, or one of its own actions."""

    COMMAND = "command"
    PREFLIGHT = "preflight"
    CLONE = "clone"
    CHECKOUT = "checkout"
    SDK_IMAGE = "sdk-image"
    OVERLAY = "overlay"
    TREE_CHECK = "tree-check"
    BUNDLE = "bundle"
    DISTFILES = "distfiles"
    RDEPEND = "rdepend"
    UPDATE_SERVER = "update-server"
    UPDATE_KEY = "update-key"
    COLLECT = "collect"
    SIGN = "sign"
    VERIFY = "verify"


@dataclass(frozen=True)
class Step:
    """One build step. ``always`` steps run every time (they are cheap, or follow a floating tag); when
    their result differs from the last build's, every later step runs again."""

    name: str
    description: str
    action: Action
    argv: tuple[str, ...] = ()
    cwd: Path | None = None
    env: tuple[tuple[str, str], ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    board: str | None = None
    always: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "action": str(self.action),
            "argv": list(self.argv),
            "cwd": str(self.cwd) if self.cwd else None,
            "env": dict(self.env),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "board": self.board,
            "always": self.always,
        }


@dataclass(frozen=True)
class Facts:
    """What the plan needs from the overlay and bundle modules (computed by the caller)."""

    sysext_name: str  # our entry in --base_sysexts
    sysext_packages: tuple[str, ...]  # what goes into it, in install order
    rdepend_atom: str
    agent_atom: str
    distfiles: tuple[str, ...] = ()  # the locked dependency sdists (file names), in lock order
    lock_file: str = "piccolo.lock.json"
    agent_version: str = ""  # the ebuild version of the agent package


def base_sysexts(facts: Facts, tree: TreeFacts | None) -> str:
    """``build_image --base_sysexts``: our entry first, then Flatcar's own list, in the tree's syntax.

    ``build_library/sysext_prod_builder`` builds each entry with ``build_sysext --base_pkginfo`` set to
    the package database of the entries before it, and a sysext leaves out every dependency an earlier
    one installed. Built after docker-flatcar, piccolod's sysext would rely on whatever docker's holds
    and break on a machine that turns docker off (or in a release whose list changed). First, it is
    built on the base image alone and holds everything it needs, whatever the list holds."""
    packages = "&".join(facts.sysext_packages)
    if tree is None:
        return f"{facts.sysext_name}<separator>{packages},<build_image's default list>"
    separator = tree.sysext_separator or "<no --base_sysexts at this tag>"
    return ",".join((f"{facts.sysext_name}{separator}{packages}", *tree.default_base_sysexts))


def sdk_version_label(cfg: BuildConfig) -> str:
    """The SDK version the build uses, as far as it is known before the checkout."""
    return cfg.flatcar.sdk_version or "from checkout"


def sdk_image_label(cfg: BuildConfig, ctx: BuildContext) -> str:
    v = cfg.flatcar.sdk_version
    return ctx.sdk_image(v) if v else f"{ctx.sdk_image_repo}:<FLATCAR_SDK_VERSION of the checkout>"


def sdk_command(cfg: BuildConfig, ctx: BuildContext, *command: str) -> tuple[str, ...]:
    """``./run_sdk_container ... -- COMMAND``. The SDK's entry script re-quotes every argument in double
    quotes and hands the line to a shell, so ``"``, ``$``, backticks and backslashes would be expanded
    there: refuse them (``|``, ``&`` and ``,`` of ``--base_sysexts`` are literal inside double quotes)."""
    for arg in command:
        if _UNSAFE_IN_SDK.search(arg):
            raise ValueError(f"argument {arg!r} cannot pass through run_sdk_container unchanged")
    argv = ["./run_sdk_container"]
    if cfg.flatcar.sdk_version is None and ctx.sdk_image_repo != DEFAULT_SDK_IMAGE:
        # run_sdk_container's -C takes a whole image name, whose tag is only known after the checkout.
        raise ValueError(
            f"the SDK image {ctx.sdk_image_repo} needs flatcar.sdk_version for its tag "
            "(--set flatcar.sdk_version=...)"
        )
    if cfg.flatcar.sdk_version is not None:
        if ctx.sdk_image_repo != DEFAULT_SDK_IMAGE:
            argv += ["-C", ctx.sdk_image(cfg.flatcar.sdk_version)]
        argv += ["-V", cfg.flatcar.sdk_version]
    return (*argv, "-a", "all", "--", *command)


def _git_steps(cfg: BuildConfig, ctx: BuildContext) -> list[Step]:
    floating = releases.is_channel(cfg.flatcar.release)
    target = f"the newest {cfg.flatcar.release}-* tag" if floating else cfg.flatcar.release
    return [
        Step(
            "clone",
            f"clone {ctx.scripts_url} (or, when the checkout exists, fetch its tags and prune stale ones: "
            + ("always, for the newest tag)" if floating else f"only when {target} is missing locally)"),
            Action.CLONE,
            argv=("git", "clone", "--no-checkout", ctx.scripts_url, str(ctx.scripts_dir)),
            outputs=(str(ctx.scripts_dir),),
            always=True,
        ),
        Step(
            "checkout",
            f"check out {target} (when HEAD is elsewhere: git checkout --force --detach, then git clean of "
            "coreos-overlay, dropping the edits of an earlier build)",
            Action.CHECKOUT,
            argv=("git", "checkout", "--force", "--detach", f"<{target}>" if floating else target),
            cwd=ctx.scripts_dir,
            inputs=(cfg.flatcar.release,),
            always=True,
        ),
        _sdk_image_step(cfg, ctx),
    ]


def _sdk_image_step(cfg: BuildConfig, ctx: BuildContext) -> Step:
    version = cfg.flatcar.sdk_version
    if version:
        what = f"check that the SDK image {ctx.sdk_image(version)} (flatcar.sdk_version) is present"
        inputs: tuple[str, ...] = (version,)
    else:
        what = (
            f"read FLATCAR_SDK_VERSION from {ctx.version_file} (the SDK the checked-out tag pins) and "
            f"check that the SDK image {ctx.sdk_image_repo}:<that version> is present"
        )
        inputs = (str(ctx.version_file),)
    how = "pulled with --pull" if ctx.allow_pull else "pull it with --pull"
    return Step(
        "sdk-image",
        f"{what} through the Docker API ({how}) before any SDK step",
        Action.SDK_IMAGE,
        inputs=inputs,
        always=True,
    )


def _prepare_steps(cfg: BuildConfig, ctx: BuildContext, facts: Facts) -> list[Step]:
    return [
        Step(
            "overlay",
            "render the overlay from the configuration and copy its packages into coreos-overlay "
            "(each package directory replaced whole)",
            Action.OVERLAY,
            inputs=(str(ctx.config_file) if ctx.config_file else "<defaults>",),
            outputs=(str(ctx.rendered_overlay), str(ctx.coreos_overlay)),
            always=True,
        ),
        Step(
            "tree-check",
            "pkgcheck our packages inside a copy of the checkout's coreos-overlay, portage-stable as master, "
            f"under {', '.join(f'coreos/{b.arch}/generic' for b in cfg.boards)} with stable keywords: "
            "every dependency must resolve at this tag (piccolo-build check --tree); done again when the "
            "tag or the rendered overlay changes",
            Action.TREE_CHECK,
            inputs=(str(ctx.coreos_overlay),),
        ),
        Step(
            "bundle",
            "build the agent's sdist, put it into the SDK's DISTDIR and check that the rendered Manifest of "
            f"{facts.agent_atom} names it",
            Action.BUNDLE,
            outputs=(str(ctx.dist_dir), str(ctx.distfiles_dir)),
            always=True,
        ),
        _distfiles_step(ctx, facts),
        _update_key_step(cfg, ctx),
        Step(
            "coreos-rdepend",
            f"add {facts.rdepend_atom} to RDEPEND of coreos-base/coreos and bump its -rN symlink",
            Action.RDEPEND,
            inputs=(facts.rdepend_atom,),
            outputs=(str(ctx.coreos_ebuild_dir),),
            always=True,
        ),
        Step(
            "update-server",
            f"make build_image's set_lsb_release write SERVER={cfg.update.server} into "
            "/usr/share/flatcar/update.conf (it writes that file with Flatcar's public server)",
            Action.UPDATE_SERVER,
            inputs=(cfg.update.server,),
            outputs=(str(ctx.lsb_release_script),),
            always=True,
        ),
    ]


def _update_key_step(cfg: BuildConfig, ctx: BuildContext) -> Step:
    """The board's coreos-au-key made to install release.update_key alone (piccolo_build.aukey), or,
    without one, left as the tag has it (an earlier build's edits undone)."""
    from piccolo_build import aukey

    outputs = (str(ctx.scripts_dir / aukey.PACKAGE_DIR), str(ctx.scripts_dir / aukey.PACKAGE_USE))
    if cfg.release.update_key is None:
        return Step(
            "update-key",
            f"release.update_key is not set: keep the tag's own {aukey.PACKAGE} (the images trust Flatcar's "
            "development key, whose private half is public: not for production); undo the edits of an "
            "earlier build with an update key",
            Action.UPDATE_KEY,
            outputs=outputs,
            always=True,
        )
    from piccolo_build import payload
    from piccolo_build.config import update_key_pem

    key_id = payload.key_id(payload.parse_public_key(update_key_pem(cfg.release.update_key)))
    return Step(
        "update-key",
        f"make the board's {aukey.PACKAGE} install release.update_key ({key_id}) as update_engine's "
        f"only key, through the tree's own USE=official: its files/{aukey.KEY_FILE} becomes that key, "
        f"'{aukey.USE_LINE}' goes into the board profiles' package.use (the SDK keeps its development "
        "keys), and a -rN revision symlink makes portage build it",
        Action.UPDATE_KEY,
        inputs=(key_id,),
        outputs=outputs,
        always=True,
    )


def _distfiles_step(ctx: BuildContext, facts: Facts) -> Step:
    source = ctx.distfiles_mirror or "the https URL in the lock"
    return Step(
        "distfiles",
        f"verify the {len(facts.distfiles)} dependency sdists locked in {facts.lock_file} (size, SHA-256, "
        f"BLAKE2B, SHA512) in {ctx.distfile_cache}, downloading only missing ones (from {source}), "
        "and copy them into the SDK's DISTDIR; a file that differs from the lock stops the build",
        Action.DISTFILES,
        inputs=(facts.lock_file, *(str(ctx.distfile_cache / name) for name in facts.distfiles)),
        outputs=tuple(str(ctx.distfiles_dir / name) for name in facts.distfiles),
        always=True,
    )


def _image_flags(tree: TreeFacts | None) -> tuple[tuple[str, ...], str]:
    """build_image's flags and image types after --replace, and what the tree made us choose."""
    if tree is None:
        return ("<oem_sysext flags and image types read from the checkout>",), (
            "plus the qemu OEM sysext when the checkout's image_to_vm.sh wants it prebuilt"
        )
    flags: list[str] = []
    notes = []
    if not tree.generate_update_default:
        flags.append("--generate_update")
        notes.append("--generate_update: this build_image does not make the update payload by default")
    types = ["prod"]
    if tree.prebuilt_oem_sysext and tree.qemu_uefi_oem_sysext:
        flags.append(f"--oem_sysexts={tree.qemu_uefi_oem_sysext}")
        types.append("oem_sysext")
        notes.append(f"the OEM sysext {tree.qemu_uefi_oem_sysext} too: image_to_vm.sh installs it prebuilt")
    return (*flags, *types), "; ".join(notes)


def _board_steps(
    cfg: BuildConfig, ctx: BuildContext, facts: Facts, board: str, tree: TreeFacts | None
) -> list[Step]:
    sdk = ctx.scripts_dir
    images = ctx.images_dir(board)
    image_args, image_note = _image_flags(tree)
    compression = ("--image_compression_formats=none",) if tree is None or tree.compression_flags else ()
    return [
        Step(
            f"build-packages-{board}",
            f"build the board's binary packages for {board}: Flatcar's own are fetched (build_packages "
            f"defaults to --usepkg --getbinpkg), only coreos-base/coreos and {facts.rdepend_atom} are built",
            Action.COMMAND,
            argv=sdk_command(cfg, ctx, "./build_packages", f"--board={board}"),
            cwd=sdk,
            inputs=(str(ctx.coreos_overlay), str(ctx.distfiles_dir)),
            board=board,
        ),
        Step(
            f"sysext-packages-{board}",
            f"binary packages of everything in the {facts.sysext_name} sysext for {board} (build_image's "
            "sysext builder installs them with --usepkgonly): fetched where Flatcar publishes them, "
            "compiled from source otherwise (ours, and what no Flatcar package needs: the list above)",
            Action.COMMAND,
            argv=sdk_command(
                cfg,
                ctx,
                f"emerge-{board}",
                "--usepkg",
                "--getbinpkg",
                "--with-bdeps=y",
                "--buildpkg",
                "--verbose",
                *facts.sysext_packages,
            ),
            cwd=sdk,
            board=board,
        ),
        Step(
            f"build-image-{board}",
            f"build the production image and its update payload for {board}, with the "
            f"{facts.sysext_name} sysext in --base_sysexts" + (f" ({image_note})" if image_note else ""),
            Action.COMMAND,
            argv=sdk_command(
                cfg,
                ctx,
                "./build_image",
                f"--board={board}",
                f"--group={cfg.update.group}",
                f"--base_sysexts={base_sysexts(facts, tree)}",
                "--replace",
                *image_args,
            ),
            cwd=sdk,
            outputs=(str(images),),
            board=board,
        ),
        Step(
            f"image-to-vm-{board}",
            f"convert the image into a qemu_uefi disk image (A/B USR slots, update_engine) for {board}, "
            "uncompressed (collect copies the .img and firmware files)",
            Action.COMMAND,
            argv=sdk_command(
                cfg,
                ctx,
                "./image_to_vm.sh",
                f"--from={ctx.container_images_dir(board)}",
                f"--board={board}",
                "--format=qemu_uefi",
                *compression,
            ),
            cwd=sdk,
            inputs=(str(images),),
            outputs=(str(images),),
            board=board,
        ),
    ]


def _release_steps(cfg: BuildConfig, ctx: BuildContext) -> list[Step]:
    key = cfg.release.signing_key
    resign = cfg.release.update_key is not None and ctx.update_signing_key is not None
    steps = [
        Step(
            "collect",
            "copy images, update payloads and qemu_uefi images out; write SHA256SUMS and manifest.json"
            + (
                "; check that build_image's package list names our coreos-au-key"
                if cfg.release.update_key
                else ""
            ),
            Action.COLLECT,
            inputs=tuple(str(ctx.images_dir(b)) for b in cfg.boards),
            outputs=(str(ctx.staging_dir),),
            always=True,
        )
    ]
    what = []
    if resign:
        what.append(
            "sign each update payload for release.update_key with the private key in "
            f"{ctx.update_signing_key} (read, never copied or logged) and update manifest.json and SHA256SUMS"
        )
    if key is not None:
        what.append(f"gpg --detach-sign --armor -u {key} SHA256SUMS and each update payload")
    if what:
        steps.append(
            Step(
                "sign",
                "; then ".join(what),
                Action.SIGN,
                argv=("gpg", "--batch", "--yes", "--armor", "--detach-sign", "--local-user", key)
                if key
                else (),
                inputs=(str(ctx.staging_dir),),
                outputs=(str(ctx.staging_dir),),
                always=True,
            )
        )
    checks = ["check every checksum"]
    if key:
        checks.append("gpg --verify every signature")
    if resign:
        checks.append("verify every update payload against release.update_key as update_engine does")
    steps.append(
        Step(
            "verify",
            ", ".join(checks) + f", then move the release into {cfg.release.output_dir}",
            Action.VERIFY,
            inputs=(str(ctx.staging_dir),),
            outputs=(cfg.release.output_dir,),
            always=True,
        )
    )
    return steps


def plan(cfg: BuildConfig, ctx: BuildContext, facts: Facts, tree: TreeFacts | None = None) -> list[Step]:
    """Every step of a full build, in order; ``tree``: the facts of the checkout (None before it)."""
    image = f" and the SDK image {ctx.sdk_image(cfg.flatcar.sdk_version)}" if cfg.flatcar.sdk_version else ""
    preflight = Step(
        "preflight",
        "check the tools, the signing key (a test signature"
        + ("; required by --require-signature)" if ctx.require_signature else ")")
        + f"{image} before any long step",
        Action.PREFLIGHT,
        inputs=tuple(x for x in (cfg.release.signing_key, cfg.flatcar.sdk_version) if x),
        always=True,
    )
    steps = [preflight, *_git_steps(cfg, ctx), *_prepare_steps(cfg, ctx, facts)]
    for board in cfg.boards:
        steps += _board_steps(cfg, ctx, facts, str(board), tree)
    return steps + _release_steps(cfg, ctx)


def names(steps: Iterable[Step]) -> list[str]:
    return [s.name for s in steps]


def tree_summary(tree: TreeFacts | None, verdict: Verdict | None = None) -> dict[str, Any]:
    """What ``plan`` shows about the checkout: its facts and the verdict on them (whether it builds,
    and what compiles in sysext-packages), or what it will read once there is one."""
    if tree is None:
        return {"read_after_checkout": list(READS)}
    out: dict[str, Any] = {"facts": tree.to_json()}
    if verdict is not None:
        out["verdict"] = verdict.to_json()
    return out
