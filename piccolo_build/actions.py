"""The build steps piccolo-build does itself (not SDK commands): git, overlay, bundle, RDEPEND, release.

Each action takes an :class:`ActionEnv` and returns the step's *result*: a short string that describes
what the step produced (a tag and commit, a tree digest, a fingerprint). Results are recorded in the
state file; a changed result makes every later step run again (see :mod:`piccolo_build.sdk`). External
programs run through :mod:`piccolo_build.run` only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from piccolo_build import release, releases
from piccolo_build.atomic import atomic_write
from piccolo_build.config import BuildConfig
from piccolo_build.context import BuildContext
from piccolo_build.errors import PiccoloError, StepFailed
from piccolo_build.plan import Action, Facts, Step
from piccolo_build.tree import TreeFacts
from piccolo_build.versionfile import read_sdk_version, sdk_version_or_none
from piccolod.model import to_plain

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    from piccolo_build.gentoo import OverlayFile


@dataclass
class ActionEnv:
    cfg: BuildConfig
    ctx: BuildContext
    facts: Facts
    step: Step
    log: Callable[[str], None]
    on_line: Callable[[str], None]
    results: dict[str, str | None] = field(default_factory=dict)
    tree: TreeFacts | None = None  # the facts of the checkout, once it is checked out


def tree_digest(root: Path) -> str:
    """SHA-256 over the relative paths, modes, symlink targets and contents under ``root``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            h.update(f"L {rel} {path.readlink()}\n".encode())
        elif path.is_file():
            h.update(f"F {rel} {path.stat().st_mode & 0o7777:o}\n".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def config_digest(cfg: BuildConfig) -> str:
    """SHA-256 of the effective configuration (after environment and flags), canonical JSON."""
    return hashlib.sha256(json.dumps(to_plain(cfg), sort_keys=True).encode()).hexdigest()


def _git(env: ActionEnv, *args: str, cwd: Path | None = None) -> None:
    from piccolo_build.run import stream

    env.log("$ git " + " ".join(args))
    code = stream(["git", *args], log=env.ctx.log_file(env.step.name), cwd=cwd, on_line=env.on_line)
    if code != 0:
        raise StepFailed(f"git {args[0]} failed with exit code {code}", exit_code=code)


def _git_out(ctx: BuildContext, *args: str) -> str:
    from piccolo_build.run import run

    return run(["git", *args], cwd=ctx.scripts_dir).stdout.strip()


def preflight(env: ActionEnv) -> str | None:
    from piccolo_build.run import which

    for tool in ("git", *(("gpg",) if env.cfg.release.signing_key else ())):
        if which(tool) is None:
            raise PiccoloError(f"{tool} not found", hint=f"install {tool}", exit_code=127)
    if env.ctx.require_signature and not env.cfg.release.signing_key:
        raise PiccoloError(
            "--require-signature: release.signing_key is not set, the release would be unsigned",
            hint="set PICCOLO_RELEASE_SIGNING_KEY or --set release.signing_key=KEY",
        )
    out = release.check_output_dir(Path(env.cfg.release.output_dir), release.protected_dirs(env.ctx))
    env.log(f"release.output_dir {out}: absent, empty or a previous release")
    fpr = None
    if env.cfg.release.signing_key:
        fpr = release.preflight_key(env.cfg.release.signing_key)
        env.log(f"signing key {env.cfg.release.signing_key} usable: fingerprint {fpr}")
    else:
        env.log("release.signing_key is not set: the release will not be signed")
    _preflight_update_key(env)
    if env.cfg.flatcar.sdk_version and env.ctx.check_sdk_image:
        _check_image(env, env.cfg.flatcar.sdk_version)
    return fpr


def _preflight_update_key(env: ActionEnv) -> None:
    """The update signing key, when given: outside the build tree, readable, the half of
    release.update_key. ``--require-signature`` wants it whenever release.update_key is set."""
    from piccolo_build import signing

    update_key = env.cfg.release.update_key
    path = env.ctx.update_signing_key
    if path is None:
        if update_key and env.ctx.require_signature:
            raise PiccoloError(
                "--require-signature: release.update_key is set but no update signing key was given, the "
                "update payloads would keep the SDK's development-key signature",
                hint=f"set ${signing.KEY_VARIABLE} or --update-signing-key to the private key file",
            )
        if update_key:
            env.log("no update signing key: sign the payloads later with `piccolo-build release sign`")
        return
    protected = {**release.protected_dirs(env.ctx), "release.output_dir": Path(env.cfg.release.output_dir)}
    signing.check_key_location(path, protected)
    key = signing.load_signing_key(path, _update_key_pem(env))
    env.log(f"update signing key usable: the private half of {_key_id(key.public_key())}")


def _update_key_pem(env: ActionEnv) -> bytes | None:
    from piccolo_build.config import update_key_pem

    path = env.cfg.release.update_key
    return None if path is None else update_key_pem(path)


def _key_id(key: RSAPublicKey) -> str:
    from piccolo_build.payload import key_id

    return key_id(key)


def _check_image(env: ActionEnv, version: str) -> str:
    from piccolo_build.docker_sdk import ensure_image

    image = env.ctx.sdk_image(version)
    info = ensure_image(image, pull=env.ctx.allow_pull)
    env.log(f"SDK image {image} {'pulled' if info.pulled else 'present'}: {info.id}")
    return info.id


def sdk_image(env: ActionEnv) -> str | None:
    """The SDK image the SDK steps will use: the configured version's, or else the one the checked-out
    tag pins (``FLATCAR_SDK_VERSION`` in version.txt, which run_sdk_container uses without ``-V``)."""
    pinned = read_sdk_version(env.ctx.version_file)
    configured = env.cfg.flatcar.sdk_version
    if configured and configured != pinned:
        env.log(f"the checkout pins SDK {pinned}; building with flatcar.sdk_version {configured}")
    version = configured or pinned
    if not configured:
        env.log(f"SDK version {version}: FLATCAR_SDK_VERSION in {env.ctx.version_file}")
    if not env.ctx.check_sdk_image:
        env.log(f"SDK image {env.ctx.sdk_image(version)} not checked (--no-sdk-image-check)")
        return version
    return f"{version} {_check_image(env, version)}"


def clone(env: ActionEnv) -> str | None:
    """Clone, or fetch into an existing checkout: always for a channel (a newer tag may exist), and for
    a pinned tag only when it is not there yet (a rebuild of a pinned release works offline, a newly
    pinned one is fetched before checkout could call it missing)."""
    d = env.ctx.scripts_dir
    wanted = env.cfg.flatcar.release
    if (d / ".git").exists():
        if not releases.is_channel(wanted) and _git_out(env.ctx, "tag", "--list", wanted) == wanted:
            env.log(f"tag {wanted} is already in {d}: nothing to fetch")
            return None
        _git(env, "fetch", "--tags", "--prune", "--prune-tags", "--force", "origin", cwd=d)
    else:
        d.parent.mkdir(parents=True, exist_ok=True)
        _git(env, "clone", "--no-checkout", env.ctx.scripts_url, str(d))
    return None


def checkout(env: ActionEnv) -> str | None:
    """Check out the pinned tag or the channel's newest, then judge the release from its tree and
    refuse it (exit 2, the reason in one line) when it does not build (docs/flatcar.md)."""
    wanted = env.cfg.flatcar.release
    channel = releases.channel_of(wanted)
    tags = _git_out(env.ctx, "tag", "--list", f"{channel}-*").splitlines()
    if releases.is_channel(wanted):
        tag = releases.newest(channel, tags)
        if tag is None:
            raise PiccoloError(f"{env.ctx.scripts_url} has no {channel}-NNNN.N.N tag")
    else:
        tag = wanted
        if tag not in tags:
            raise PiccoloError(
                f"flatcar.release: tag {tag} does not exist in {env.ctx.scripts_url}",
                hint="pick one of: "
                + " ".join(sorted(tags, key=lambda t: releases.version(t) or (0, 0, 0))[-5:]),
            )
    commit = _git_out(env.ctx, "rev-parse", f"{tag}^{{commit}}")
    result = f"{tag} {commit}"
    head = _git_out(env.ctx, "rev-parse", "HEAD")
    if head == commit and env.results.get(env.step.name) == result:
        env.log(f"already at {tag} ({commit})")
    else:
        _git(env, "checkout", "--force", "--detach", tag, cwd=env.ctx.scripts_dir)
        # Our earlier edits (package directories, the bumped -rN symlink) are untracked files in the
        # overlay, and set_lsb_release is edited in place; drop them so the following steps apply the
        # edits afresh to this tag's files.
        overlay = env.ctx.coreos_overlay.relative_to(env.ctx.scripts_dir)
        _git(env, "clean", "-d", "--force", "--quiet", "--", str(overlay), cwd=env.ctx.scripts_dir)
        env.log(f"checked out {tag} ({commit})")
    # Whether this release builds is read from its files (docs/flatcar.md "Supported releases").
    verdict = releases.judge_checkout(env.ctx.scripts_dir, env.facts)
    env.log(f"{tag}: {'builds' if verdict.builds else 'does not build'}: {verdict.reason}")
    releases.refuse(tag, verdict)
    return result


def rendered_files(env: ActionEnv) -> list[OverlayFile]:
    """The overlay for this checkout: PYTHON_COMPAT is the Python its board profiles build."""
    from piccolo_build.overlay import overlay_files
    from piccolo_build.tree import read_tree_facts

    tree = env.tree if env.tree is not None else read_tree_facts(env.ctx.scripts_dir)
    try:
        return overlay_files(env.cfg, tree.python_compat)
    except ValueError as exc:
        raise PiccoloError(f"cannot render the overlay: {exc}") from None


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def overlay(env: ActionEnv) -> str | None:
    """Render into the work dir, then copy each package directory into the checkout's coreos-overlay.

    The rendered tree has ``coreos-overlay/<category>/<package>/...`` (copied package by package, each
    replaced whole so no stale file survives) and may have top-level directories such as
    ``licenses/``, whose files go to the same place inside coreos-overlay.
    """
    from piccolo_build.gentoo import OVERLAY, package_key
    from piccolo_build.render import write_tree

    files = rendered_files(env)
    changed = write_tree(files, env.ctx.rendered_overlay)
    state = "changed" if changed else "unchanged"
    env.log(f"rendered {len(files)} files into {env.ctx.rendered_overlay} ({state})")
    target = env.ctx.coreos_overlay
    if not target.is_dir():
        raise PiccoloError(
            f"{target}: no coreos-overlay in the checkout (is {env.ctx.scripts_dir} flatcar/scripts?)"
        )
    rendered = env.ctx.rendered_overlay
    packages = {k for f in files if (k := package_key(f)) is not None}
    for key in sorted(packages):
        _replace_dir(rendered / OVERLAY / key, target / key)
        env.log(f"placed {key} in {target}")
    # Everything else (licenses/, the per-package bashrc files under coreos/config/env) file by file,
    # next to Flatcar's own files there.
    for f in files:
        if package_key(f) is None:
            rel = f.path.relative_to(OVERLAY) if f.path.is_relative_to(OVERLAY) else f.path
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(rendered / f.path, target / rel)
            env.log(f"placed {rel} in {target}")
    return tree_digest(rendered)


def tree_check(env: ActionEnv) -> str | None:
    """pkgcheck our packages inside the checkout's real repositories (piccolo_build.treecheck)."""
    from piccolo_build.treecheck import check_tree

    arches = [b.arch for b in env.cfg.boards]
    result = check_tree(env.ctx.scripts_dir, rendered_files(env), arches, env.ctx.pkgcheck_cache)
    for line in result.findings:
        env.log(line)
    if not result.ok:
        raise PiccoloError(
            f"{len(result.findings)} pkgcheck finding(s) at this tag, first: {result.findings[0]}",
            hint=f"see {env.ctx.log_file(env.step.name)}; docs/flatcar.md lists the supported releases",
        )
    env.log(f"pkgcheck: {', '.join(result.packages)} clean under {', '.join(result.profiles)}")
    return None


def bundle(env: ActionEnv) -> str | None:
    """Build the sdist and put it into the SDK's DISTDIR; the agent package's Manifest (rendered, copied
    in by the overlay step) must name exactly this file."""
    from piccolo_build import bundle as agent_bundle
    from piccolo_build.gentoo import manifest_line

    sdist = agent_bundle.build_sdist(env.cfg, env.ctx.dist_dir)
    data = sdist.read_bytes()
    env.ctx.distfiles_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sdist, env.ctx.distfiles_dir / sdist.name)
    env.log(f"placed {sdist.name} in {env.ctx.distfiles_dir}")
    manifest = env.ctx.coreos_overlay / env.cfg.package.category / env.cfg.package.name / "Manifest"
    line = manifest_line(sdist.name, data)
    if not manifest.is_file() or line not in manifest.read_text(encoding="utf-8").splitlines():
        raise PiccoloError(
            f"{manifest}: does not carry the DIST line of {sdist.name} ({line.split()[2]} bytes)",
            hint="run the build from the overlay step (the agent changed since the overlay was rendered)",
        )
    env.log(f"{manifest} names {sdist.name} with its size and digests")
    return f"{sdist.name} {hashlib.sha256(data).hexdigest()}"


def distfiles(env: ActionEnv) -> str | None:
    """The locked dependency sdists: into the cache (only missing ones are downloaded), verified
    against the lock there, copied into the SDK's DISTDIR and verified there again."""
    from piccolo_build import lock as locking

    lock = locking.load_lock()
    cache, distdir = env.ctx.distfile_cache, env.ctx.distfiles_dir
    missing = [p.filename for p in lock.packages if not (cache / p.filename).exists()]
    if missing:
        source = env.ctx.distfiles_mirror or "the lock's URLs"
        env.log(f"downloading {len(missing)} missing into {cache} from {source}: {' '.join(missing)}")
    host = env.ctx.distfiles_mirror or locking.FILES_HOST
    locking.fetch_distfiles(lock, cache, files_host=host)  # verifies every file, downloaded or not
    env.log(f"verified {len(lock.packages)} files in {cache} against {locking.LOCK_NAME}")
    distdir.mkdir(parents=True, exist_ok=True)
    for pkg in lock.packages:
        data = (cache / pkg.filename).read_bytes()
        target = distdir / pkg.filename
        if not target.is_file() or target.read_bytes() != data:
            atomic_write(target, data)
            env.log(f"placed {pkg.filename} in {distdir}")
    locking.verify_distfiles(lock, distdir)
    return hashlib.sha256("".join(f"{p.filename} {p.sha256}\n" for p in lock.packages).encode()).hexdigest()


def rdepend(env: ActionEnv) -> str | None:
    from piccolo_build import coreos

    changed = coreos.add_rdepend(env.ctx.coreos_ebuild_dir, env.facts.rdepend_atom)
    env.log(
        f"{env.facts.rdepend_atom} {'added to' if changed else 'already in'} RDEPEND of coreos-base/coreos"
    )
    return tree_digest(env.ctx.coreos_ebuild_dir)


def update_server(env: ActionEnv) -> str | None:
    from piccolo_build import lsb_release

    server = env.cfg.update.server
    changed = lsb_release.set_update_server(env.ctx.scripts_dir, server)
    script = env.ctx.lsb_release_script
    env.log(f"SERVER={server} {'set in' if changed else 'already in'} {script} (update.conf of the image)")
    return hashlib.sha256(script.read_bytes()).hexdigest()


def update_key(env: ActionEnv) -> str | None:
    from piccolo_build import aukey

    pem = _update_key_pem(env)
    if pem is None:
        undone = aukey.reset(env.ctx.scripts_dir)
        env.log(
            f"release.update_key is not set: {aukey.PACKAGE} as the tag has it"
            + (" (an earlier build's edits undone)" if undone else "")
            + "; the images trust Flatcar's development key"
        )
        return None
    changed, version = aukey.set_update_key(env.ctx.scripts_dir, pem)
    env.log(
        f"{aukey.PACKAGE}-{version} {'now installs' if changed else 'already installs'} release.update_key "
        f"as {aukey.INSTALLED_KEY} on the board (USE=official); the SDK keeps its development keys"
    )
    return f"{version} {hashlib.sha256(pem).hexdigest()}"


def _need(env: ActionEnv, step: str) -> str:
    value = env.results.get(step)
    if not value:
        raise PiccoloError(f"step {step} has not finished", hint="run the build without --from")
    return value


def collect(env: ActionEnv) -> str | None:
    tag, _, commit = _need(env, "checkout").partition(" ")
    sdist_name = _need(env, "bundle").split(" ")[0]
    info = release.ReleaseInfo(
        piccolo_version=env.cfg.version,
        flatcar_tag=tag,
        flatcar_commit=commit,
        sdk_version=env.cfg.flatcar.sdk_version or sdk_version_or_none(env.ctx.version_file),
        update_group=env.cfg.update.group,
        boards=tuple(str(b) for b in env.cfg.boards),
        config_sha256=config_digest(env.cfg),
    )
    images = {str(b): env.ctx.images_dir(str(b)) for b in env.cfg.boards}
    if env.cfg.release.update_key is not None:
        from piccolo_build import aukey

        version = _need(env, "update-key").split(" ")[0]
        for board, directory in sorted(images.items()):
            env.log(f"{board}: {aukey.check_image_reports(directory, version)}")
    release.collect(images, env.ctx.dist_dir / sdist_name, info, env.ctx.staging_dir, env.log)
    return hashlib.sha256((env.ctx.staging_dir / release.SUMS).read_bytes()).hexdigest()


def sign(env: ActionEnv) -> str | None:
    from piccolo_build import signing

    result = []
    path = env.ctx.update_signing_key
    if env.cfg.release.update_key is not None and path is not None:
        key = signing.load_signing_key(path, _update_key_pem(env))
        signing.sign_payloads(env.ctx.staging_dir, key, env.log)
        result.append(_key_id(key.public_key()))
    if env.cfg.release.signing_key:
        fpr = _need(env, "preflight")
        release.sign_release(env.ctx.staging_dir, fpr, env.log)
        result.append(fpr)
    return " ".join(result)


def verify(env: ActionEnv) -> str | None:
    staging = env.ctx.staging_dir
    if not (staging / release.SUMS).is_file():
        raise PiccoloError(f"{staging}: nothing staged to verify", hint="run the build --from collect")
    fpr = env.results.get("preflight") if env.cfg.release.signing_key else None
    release.verify_release(staging, fpr, env.log)
    pem = _update_key_pem(env)
    if pem is not None and env.ctx.update_signing_key is not None:
        from piccolo_build import payload, signing

        signing.verify_payloads(staging, payload.parse_public_key(pem), env.log)
    elif pem is not None:
        env.log(
            "the update payloads still carry the SDK's development-key signature: sign them with "
            "`piccolo-build release sign` before they go to an update server"
        )
    out = Path(env.cfg.release.output_dir)
    release.publish(staging, out, release.protected_dirs(env.ctx))
    env.log(f"release verified and published in {out}")
    return hashlib.sha256((out / release.SUMS).read_bytes()).hexdigest()


ACTIONS: dict[Action, Callable[[ActionEnv], str | None]] = {
    Action.PREFLIGHT: preflight,
    Action.CLONE: clone,
    Action.CHECKOUT: checkout,
    Action.SDK_IMAGE: sdk_image,
    Action.OVERLAY: overlay,
    Action.TREE_CHECK: tree_check,
    Action.BUNDLE: bundle,
    Action.DISTFILES: distfiles,
    Action.RDEPEND: rdepend,
    Action.UPDATE_SERVER: update_server,
    Action.UPDATE_KEY: update_key,
    Action.COLLECT: collect,
    Action.SIGN: sign,
    Action.VERIFY: verify,
}
