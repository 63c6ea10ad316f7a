"""The install layout: which file lands where on the device, from which package, and how.

One table (:data:`LAYOUT`) is the single answer to "what does Piccolo OS add to Flatcar":

- it renders the install phases of both ebuilds (:func:`install_lines`: ``systemd_dounit``,
  ``systemd_enable_service``, ``insinto`` + ``newins``, ``exeinto`` + ``newexe``, ``newtmpfiles``);
- it lays out a staging root (:func:`stage_entries`, used by ``piccolo-build stage``): ``base/`` is what
  ``coreos-base/piccolo-base`` installs into the base image's ``/usr``, ``sysext/`` is the piccolod
  extension tree;
- ``piccolo-build check`` installs the units for ``systemd-analyze verify`` from it.

So the test rig boots what the ebuilds install. Two packages (docs/boot.md):

- :attr:`Package.BASE`, ``coreos-base/piccolo-base``, in the base image (no Python there): the guard that
  ``update-engine.service`` waits for, its drop-in, and the unit that starts piccolod once its sysext is
  merged. All of it works without the sysext, which is what keeps a marked slot from ever being blocked.
- :attr:`Package.AGENT`, ``app-admin/piccolod`` (``<package.category>/<package.name>``), built into the
  piccolod sysext with Python: the agent (installed by ``distutils-r1``, not listed here), its unit,
  tmpfiles and vendor policy.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

UNIT_DIR = PurePosixPath("/usr/lib/systemd/system")
AGENT_UNIT = "piccolod.service"
GUARD_UNIT = "piccolod-guard.service"
START_UNIT = "piccolod-start.service"
UPDATE_ENGINE_UNIT = "update-engine.service"
LIB_DIR = PurePosixPath("/usr/lib/piccolod")
GUARD_SCRIPT = LIB_DIR / "piccolod-guard"
START_SCRIPT = LIB_DIR / "piccolod-start"
UPDATE_ENGINE_DROPIN = "10-piccolod-dependency.conf"
# The agent's runtime directory (its unit's RuntimeDirectory=) and the pass token the guard waits for.
RUNTIME_DIR = PurePosixPath("/run/piccolod")
PASS_TOKEN = RUNTIME_DIR / "gate-passed"
# What the base package's scripts run, as its RDEPEND (coreos-base/coreos pulls all of it in at every
# supported tag): bash as /bin/sh, coreutils (od, dd, stat, readlink, tr, cut, sleep), grep, gzip (an entry
# array's CRC32 is its trailer), awk, sgdisk, blkid and blockdev, systemctl.
BASE_RUNTIME_DEPENDENCIES = (
    "app-alternatives/awk",
    "app-arch/gzip",
    "app-shells/bash",
    "sys-apps/coreutils",
    "sys-apps/gptfdisk",
    "sys-apps/grep",
    "sys-apps/systemd",
    "sys-apps/util-linux",
)


class Package(enum.StrEnum):
    BASE = "base"  # coreos-base/piccolo-base, in the base image
    AGENT = "sysext"  # the agent's package, in the piccolod sysext


class How(enum.StrEnum):
    UNIT = "systemd_dounit"
    ENABLE = "systemd_enable_service"  # a .wants/ symlink made at build time
    FILE = "insinto+newins"
    EXECUTABLE = "exeinto+newexe"
    TMPFILES = "newtmpfiles"


@dataclass(frozen=True)
class Entry:
    """One installed file. ``source`` is its name in the package's ``files/`` (None for a link),
    ``template`` how ``render`` makes that source (a Jinja template, or ``vendor-policy``)."""

    package: Package
    how: How
    dest: PurePosixPath
    source: str | None = None
    template: str | None = None
    mode: int = 0o644
    wanted_by: str | None = None  # How.ENABLE: the target whose .wants/ gets the link


def _unit(package: Package, name: str, template: str) -> Entry:
    return Entry(package, How.UNIT, UNIT_DIR / name, name, template)


def _enable(package: Package, target: str, unit: str) -> Entry:
    return Entry(package, How.ENABLE, UNIT_DIR / f"{target}.wants" / unit, wanted_by=target)


LAYOUT: tuple[Entry, ...] = (
    # --- the base image ---------------------------------------------------------------------------------
    Entry(
        Package.BASE,
        How.FILE,
        UNIT_DIR / f"{UPDATE_ENGINE_UNIT}.d" / UPDATE_ENGINE_DROPIN,
        UPDATE_ENGINE_DROPIN,
        "base/update-engine-dropin.conf.j2",
    ),
    _unit(Package.BASE, GUARD_UNIT, "base/piccolod-guard.service.j2"),
    Entry(Package.BASE, How.EXECUTABLE, GUARD_SCRIPT, "piccolod-guard.sh", "base/piccolod-guard.sh", 0o755),
    _unit(Package.BASE, START_UNIT, "base/piccolod-start.service.j2"),
    _enable(Package.BASE, "multi-user.target", START_UNIT),
    Entry(Package.BASE, How.EXECUTABLE, START_SCRIPT, "piccolod-start.sh", "base/piccolod-start.sh", 0o755),
    # --- the piccolod sysext ----------------------------------------------------------------------------
    _unit(Package.AGENT, AGENT_UNIT, "agent/piccolod.service.j2"),
    # Kept in the sysext too: with a reload and a restart of multi-user.target after the merge (Flatcar's
    # ensure-sysext.service) systemd starts the agent through it; piccolod-start covers the other orders.
    _enable(Package.AGENT, "multi-user.target", AGENT_UNIT),
    Entry(
        Package.AGENT,
        How.TMPFILES,
        PurePosixPath("/usr/lib/tmpfiles.d/piccolod.conf"),
        "piccolod.tmpfiles",
        "agent/piccolod.tmpfiles.j2",
    ),
    Entry(
        Package.AGENT,
        How.FILE,
        LIB_DIR / "health-policy.yaml",
        "health-policy.yaml",
        "vendor-policy",
    ),
)


def entries(package: Package) -> tuple[Entry, ...]:
    return tuple(e for e in LAYOUT if e.package is package)


def install_lines(package: Package) -> list[str]:
    """The ebuild's install commands for ``package``, one shell line each (no indentation)."""
    lines: list[str] = []
    for e in entries(package):
        src = f'"${{FILESDIR}}/{e.source}"'
        if e.how is How.UNIT:
            if e.dest.parent != UNIT_DIR or e.dest.name != e.source:
                raise ValueError(f"{e.dest}: systemd_dounit installs {e.source} into {UNIT_DIR} as is")
            lines.append(f"systemd_dounit {src}")
        elif e.how is How.ENABLE:
            lines.append(f"systemd_enable_service {e.wanted_by} {e.dest.name}")
        elif e.how is How.FILE:
            lines += [f"insinto {e.dest.parent}", f"newins {src} {e.dest.name}"]
        elif e.how is How.EXECUTABLE:
            lines += [f"exeinto {e.dest.parent}", f"newexe {src} {e.dest.name}"]
        else:  # How.TMPFILES
            if e.dest.parent != PurePosixPath("/usr/lib/tmpfiles.d"):
                raise ValueError(f"{e.dest}: newtmpfiles installs into /usr/lib/tmpfiles.d")
            lines.append(f"newtmpfiles {src} {e.dest.name}")
    return lines


def enabled_units(package: Package) -> Iterator[tuple[str, str]]:
    """(target, unit) for each .wants/ link of ``package``."""
    for e in entries(package):
        if e.how is How.ENABLE and e.wanted_by:
            yield e.wanted_by, e.dest.name
