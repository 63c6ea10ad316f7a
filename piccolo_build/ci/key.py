"""The cache key of one build: SHA-256 over everything the images are made from.

Inputs, one line each: the Flatcar tag a release resolves to right now and its commit (``git ls-remote``
of the flatcar/scripts repository: a channel moves when Flatcar tags a new release), the rendered
overlay (paths, modes, bytes), the agent's reproducible sdist, the effective configuration (after
``PICCOLO_*`` and ``--set``: boards, release, update server and key path...), the public update key's
bytes, the dependency lock in use and the piccolo-build version. Two builds with the same key make the
same images from the same sources; CI skips a build whose key a release already records.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from piccolo_build import releases
from piccolo_build.errors import PiccoloError

if TYPE_CHECKING:
    from piccolo_build.config import BuildConfig

_REF = re.compile(r"^(?P<sha>[0-9a-f]{40,64})\trefs/tags/(?P<tag>[A-Za-z0-9._-]+?)(?P<peeled>\^\{\})?$")


def resolve_release(release: str, scripts_url: str) -> tuple[str, str]:
    """(tag, commit) that ``release`` (a channel or a pinned tag) names in ``scripts_url`` now."""
    from piccolo_build.run import run

    channel = releases.channel_of(release)
    r = run(["git", "ls-remote", "--tags", "--", scripts_url, f"refs/tags/{channel}-*"], check=False)
    if r.returncode != 0:
        raise PiccoloError(
            f"git ls-remote {scripts_url} failed with exit code {r.returncode}: {r.stderr.strip()[-300:]}",
            hint="is --scripts-url reachable?",
        )
    commits: dict[str, str] = {}
    for line in r.stdout.splitlines():
        m = _REF.match(line)
        if m is not None and (m["peeled"] or m["tag"] not in commits):
            commits[m["tag"]] = m["sha"]  # an annotated tag's peeled line names its commit
    tag = releases.newest(channel, commits) if releases.is_channel(release) else release
    if tag is None or tag not in commits:
        raise PiccoloError(
            f"flatcar.release: {release} names no tag in {scripts_url}",
            hint="a channel (lts, stable, beta, alpha) or a tag that exists there",
        )
    return tag, commits[tag]


def cache_key(cfg: BuildConfig, scripts_url: str) -> str:
    from piccolo_build import __version__, bundle, lock
    from piccolo_build.actions import config_digest
    from piccolo_build.config import update_key_pem
    from piccolo_build.overlay import overlay_files

    tag, commit = resolve_release(cfg.flatcar.release, scripts_url)
    overlay = hashlib.sha256()
    for f in overlay_files(cfg):
        overlay.update(f"{f.path} {f.mode:o} {len(f.content)}\n".encode())
        overlay.update(f.content)
    key = update_key_pem(cfg.release.update_key) if cfg.release.update_key else b""
    lines = [
        f"flatcar {tag} {commit}",
        f"overlay {overlay.hexdigest()}",
        f"sdist {bundle.sdist_name(cfg)} {hashlib.sha256(bundle.sdist_bytes(cfg)).hexdigest()}",
        f"config {config_digest(cfg)}",
        f"update-key {hashlib.sha256(key).hexdigest()}",
        f"lock {hashlib.sha256(lock.lock_path().read_bytes()).hexdigest()}",
        f"piccolo-build {__version__}",
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
