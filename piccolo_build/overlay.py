"""The overlay plan: every file ``render`` writes into the Flatcar SDK overlay, with its bytes and mode.

Two packages, whose installed files are one table (:mod:`piccolo_build.layout`; docs/boot.md):

- ``<category>/<name>`` (default ``app-admin/piccolod``), built into the piccolod sysext: the agent,
  installed from its sdist by ``distutils-r1``, with ``piccolod.service`` (``Type=notify``), the vendor
  policy for ``/usr/lib/piccolod/health-policy.yaml`` and tmpfiles for ``/var/lib/piccolod``.
- ``coreos-base/piccolo-base``, in the base image: the guard ``update-engine.service`` waits for
  (``piccolod-guard.service`` and its POSIX sh script), update-engine's drop-in, and
  ``piccolod-start.service``, which starts the agent once its sysext is merged. Not
  ``/usr/share/flatcar/update.conf``: build_image's ``set_lsb_release`` overwrites it, so the build
  edits that script instead (:mod:`piccolo_build.lsb_release`).

Plus ``licenses/<LICENSE>`` when the licence is not free. The package's ``Manifest`` is not part of the
plan: its digest changes with every agent source edit (``check`` makes one for its scan).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from piccolo_build import layout
from piccolo_build.config import Board, BuildConfig
from piccolo_build.quoting import unit_path
from piccolo_build.render import render_template, template_bytes
from piccolod.model import to_plain

OVERLAY = PurePosixPath("coreos-overlay")
BASE_CATEGORY = "coreos-base"
BASE_NAME = "piccolo-base"
UNIT = layout.AGENT_UNIT

# TimeoutStartSec = startup deadline + reboot grace + this margin: systemd must never kill the gate
# before it has given its verdict and, on failure, rebooted (docs/agent.md "The gate").
START_TIMEOUT_MARGIN_SECONDS = 60
# How long the guard waits for piccolod's pass token on a slot that is not marked, beyond the agent's own
# start timeout: the agent may start late (a sysext merged late). Past it update-engine's start job fails;
# a pass that comes later still starts update-engine (the agent asks systemd for it).
GUARD_WAIT_MARGIN_SECONDS = 60
# The guard unit's TimeoutStartSec= exceeds its own wait by this much, so the script, not systemd, ends it.
GUARD_TIMEOUT_MARGIN_SECONDS = 30
# Restarts allowed per interval; the interval spans more than that many full start timeouts, so a
# gate that keeps failing or timing out ends in "failed" instead of looping.
START_LIMIT_BURST = 3

# PYTHON_COMPAT of every ebuild we render (the agent's and its dev-python dependencies'). Each entry must
# be an implementation the SDK's python-utils-r1 eclass knows: an unknown one dies ("Invalid
# implementation in PYTHON_COMPAT"), a retired one is ignored (fatal from EAPI 9). flatcar/scripts 2026-08:
# lts-4081 knows python3_{10..13}, stable-4593 python3_{11..14}, beta-4757 python3_{11..15}, alpha-4790
# and main python3_{12..15} (3.11 retired); every one builds python3_12 only (PYTHON_TARGETS in the
# coreos profile). 3.12-3.13 is the range all of them accept, and it holds the interpreter they build.
PYTHON_COMPAT = "python3_{12..13}"

# Python packages the agent imports on the device (pyproject's ``agent`` extra), as Gentoo atoms.
PYTHON_DEPENDENCIES = (
    "dev-python/docker",
    "dev-python/prometheus-client",
    "dev-python/pyyaml",
    "dev-python/tpm2-pytss",
)


@dataclass(frozen=True)
class OverlayFile:
    path: PurePosixPath
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class ServiceTimes:
    """The unit's timing settings, derived from the policy."""

    start_timeout: int
    watchdog: int
    start_limit_interval: int
    guard_wait: int
    guard_timeout: int


def service_times(cfg: BuildConfig) -> ServiceTimes:
    """Timeouts for ``piccolod.service``; raises ``ValueError`` if they would not cover the deadline."""
    hp = cfg.health_policy
    deadline = hp.startup.timeout_seconds + (
        hp.rollback.reboot_grace_seconds if hp.rollback.enable_automatic else 0
    )
    start_timeout = math.ceil(deadline) + START_TIMEOUT_MARGIN_SECONDS
    if start_timeout <= deadline:
        raise ValueError(
            f"TimeoutStartSec={start_timeout} does not exceed the gate's deadline of {deadline:g} s"
        )
    watchdog = math.ceil(2 * hp.runtime.check_interval_seconds) + START_TIMEOUT_MARGIN_SECONDS
    guard_wait = start_timeout + GUARD_WAIT_MARGIN_SECONDS
    return ServiceTimes(
        start_timeout,
        watchdog,
        (START_LIMIT_BURST + 1) * start_timeout,
        guard_wait,
        guard_wait + GUARD_TIMEOUT_MARGIN_SECONDS,
    )


def vendor_policy(cfg: BuildConfig) -> bytes:
    """``/usr/lib/piccolod/health-policy.yaml``: the policy serialised by Python, not a template."""
    body = yaml.safe_dump(
        to_plain(cfg.policy()), sort_keys=False, default_flow_style=False, allow_unicode=False
    )
    header = (
        "# Vendor health policy of piccolod, generated by piccolo-build from piccolo.yaml.\n"
        "# Override keys in /etc/piccolod/health-policy.yaml; do not edit this file.\n"
    )
    return (header + body).encode()


def keywords(cfg: BuildConfig) -> str:
    return " ".join(sorted(b.arch for b in cfg.boards))


def context(cfg: BuildConfig) -> dict[str, Any]:
    """Everything the templates see: typed objects and derived values, never raw dicts."""
    return {
        "cfg": cfg,
        "keywords": keywords(cfg),
        "times": service_times(cfg),
        "start_limit_burst": START_LIMIT_BURST,
        "unit": UNIT,
        "agent_unit": layout.AGENT_UNIT,
        "guard_unit": layout.GUARD_UNIT,
        "guard_script": layout.GUARD_SCRIPT,
        "start_script": layout.START_SCRIPT,
        "guard_disk": "auto" if cfg.agent.boot.disk == "auto" else unit_path(cfg.agent.boot.disk),
        "pass_token": layout.PASS_TOKEN,
        "runtime_dir": layout.RUNTIME_DIR.name,
        "agent_install": layout.install_lines(layout.Package.AGENT),
        "base_install": layout.install_lines(layout.Package.BASE),
        "python_deps": PYTHON_DEPENDENCIES,
        "python_compat": PYTHON_COMPAT,
        "boards": [Board(b) for b in cfg.boards],
    }


def layout_content(cfg: BuildConfig, entry: layout.Entry, ctx: dict[str, Any] | None = None) -> bytes:
    """The bytes of one installed file of the layout (what ``files/<source>`` holds)."""
    if entry.template is None:
        raise ValueError(f"{entry.dest}: a link has no content")
    if entry.template == "vendor-policy":
        return vendor_policy(cfg)
    if not entry.template.endswith(".j2"):  # a script, copied as it is
        return template_bytes(entry.template)
    return render_template(entry.template, context(cfg) if ctx is None else ctx)


def package_dir(cfg: BuildConfig, package: layout.Package) -> PurePosixPath:
    if package is layout.Package.BASE:
        return OVERLAY / BASE_CATEGORY / BASE_NAME
    return OVERLAY / cfg.package.category / cfg.package.name


def overlay_files(cfg: BuildConfig) -> list[OverlayFile]:
    """The whole rendered overlay, sorted by path. Raises ``ValueError`` for values it cannot render."""
    ctx = context(cfg)
    pkg = package_dir(cfg, layout.Package.AGENT)
    base = package_dir(cfg, layout.Package.BASE)
    files = [
        OverlayFile(
            pkg / f"{cfg.package.name}-{cfg.version}.ebuild", render_template("agent/agent.ebuild.j2", ctx)
        ),
        OverlayFile(pkg / "metadata.xml", render_template("metadata.xml.j2", ctx)),
        OverlayFile(base / f"{BASE_NAME}-{cfg.version}.ebuild", render_template("base/base.ebuild.j2", ctx)),
        OverlayFile(base / "metadata.xml", render_template("metadata.xml.j2", ctx)),
    ]
    for entry in layout.LAYOUT:
        if entry.source is not None:
            where = package_dir(cfg, entry.package) / "files" / entry.source
            files.append(OverlayFile(where, layout_content(cfg, entry, ctx)))
    if not cfg.package.license_is_free:
        files.append(
            OverlayFile(PurePosixPath("licenses") / cfg.package.license, render_template("license.j2", ctx))
        )
    # dev-python/* ebuilds for the agent's dependencies portage-stable lacks, from piccolo.lock.json.
    from piccolo_build.deps import dependency_files

    files += dependency_files(cfg)
    return sorted(files, key=lambda f: f.path)
