"""Facts the build reads from a flatcar/scripts checkout instead of assuming them (docs/flatcar.md).

They change from release to release; each is read from the file where the tree itself keeps it, and a
tree that does not say it clearly is an error naming the file, never a guess:

- ``--base_sysexts``: Flatcar's default list is the default of build_image's ``DEFINE_string
  base_sysexts``; the separator between a sysext's name and its packages is ``:`` up to stable-4230 and
  ``|`` later. ``build_library/sysext_prod_builder`` splits an entry with ``${sysext%<sep>*}``; both
  files must agree.
- the OEM sysext of qemu_uefi: ``IMG_qemu_uefi_OEM_SYSEXT`` in ``build_library/vm_image_util.sh``. From
  beta-4757 on image_to_vm.sh only installs a prebuilt one ("Run 'build_image oem_sysext' first"), so
  build_image must build it (image type ``oem_sysext``, ``--oem_sysexts=<name>``); before, image_to_vm.sh
  builds it itself.
- build_image's default image types (``eval set -- "${FLAGS_ARGV:-prod ...}"``) and whether it makes
  the update payload by default (``DEFINE_boolean generate_update``: false at lts-4081).
- ``image_to_vm.sh``'s compression flags (``build_library/release_util.sh``: ``--image_compression_formats``).
- the OS and SDK versions (``sdk_container/.repo/manifests/version.txt``) and the board profiles
  (``coreos-overlay/profiles/profiles.desc``).
- the Python the board builds: the ``PYTHON_TARGETS`` the board profiles ``coreos/<arch>/generic``
  enable and do not mask, stacked as portage stacks them (:mod:`piccolo_build.portage.profile`;
  ``coreos-overlay/profiles/coreos/base/make.defaults`` and ``use.mask`` decide it at every tag), and
  only implementations the tree's ``eclass/python-utils-r1.eclass`` knows (``_PYTHON_ALL_IMPLS``).
  Our ebuilds' ``PYTHON_COMPAT`` is rendered from it.
- Flatcar's own list of extra sysexts (``build_library/extra_sysexts.sh``), whose packages Flatcar
  publishes as binary packages.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from piccolo_build.errors import PiccoloError, read_text
from piccolo_build.gentoo import COREOS_OVERLAY, PORTAGE_STABLE
from piccolo_build.versionfile import SDK_KEY, VERSION_KEY, read_value

VERSION_FILE = Path("sdk_container/.repo/manifests/version.txt")
BUILD_IMAGE = Path("build_image")
SYSEXT_BUILDER = Path("build_library/sysext_prod_builder")
VM_IMAGE_UTIL = Path("build_library/vm_image_util.sh")
RELEASE_UTIL = Path("build_library/release_util.sh")
PROFILES_DESC = Path(COREOS_OVERLAY) / "profiles" / "profiles.desc"
EXTRA_SYSEXTS = Path("build_library/extra_sysexts.sh")
PYTHON_ECLASS = Path(PORTAGE_STABLE) / "eclass" / "python-utils-r1.eclass"
PREBUILT_OEM_MESSAGE = "Run 'build_image oem_sysext' first"
BOARD_ARCHES = ("amd64", "arm64")

_BASE_SYSEXTS = re.compile(r'^DEFINE_string base_sysexts "(?P<value>[^"]*)"', re.M)
_ENTRY = re.compile(r"(?P<name>[A-Za-z0-9_.+-]+)(?P<sep>[:|])(?P<packages>[A-Za-z0-9][^,]*)")
_SPLIT = re.compile(r'^\s*name="\$\{sysext%(?P<sep>[:|])\*\}"', re.M)
_DEFAULT_TYPES = re.compile(r'^eval set -- "\$\{FLAGS_ARGV:-(?P<types>[a-z_ ]+)\}"', re.M)
_GENERATE_UPDATE = re.compile(r'^DEFINE_boolean generate_update "\$\{FLAGS_(?P<value>TRUE|FALSE)\}"', re.M)
_OEM = re.compile(r"^IMG_qemu_uefi_OEM_SYSEXT=(?P<name>[A-Za-z0-9_-]*)\s*$", re.M)
_COMPRESSION = re.compile(r"^DEFINE_string image_compression_formats\b", re.M)
_PROFILE = re.compile(r"^(?P<arch>\S+)\s+(?P<profile>coreos/(?P=arch)/generic)\s+\S+\s*$", re.M)
_ALL_IMPLS = re.compile(r"^_PYTHON_ALL_IMPLS=\((?P<impls>[^)]*)\)", re.M)
_EXTRA_ENTRY = re.compile(
    r'^\s*(?:"(?P<quoted>[A-Za-z0-9_.+-]+[:|][^"]+)"|(?P<bare>[A-Za-z0-9_.+-]+[:|]\S+))\s*$', re.M
)


@dataclass(frozen=True)
class TreeFacts:
    """What the plan takes from one checkout."""

    flatcar_version: str
    sdk_version: str
    sysext_separator: str | None  # between a --base_sysexts entry's name and its packages; None: no flag
    default_base_sysexts: tuple[str, ...]  # build_image's own list, entries as the tree writes them
    default_image_types: tuple[str, ...]  # what build_image builds without an image argument
    generate_update_default: bool  # build_image makes flatcar_test_update.gz without --generate_update
    qemu_uefi_oem_sysext: str | None  # the OEM sysext the qemu_uefi image installs
    prebuilt_oem_sysext: bool  # image_to_vm.sh takes it prebuilt from build_image oem_sysext
    compression_flags: bool  # image_to_vm.sh has --image_compression_formats
    board_profiles: tuple[str, ...]  # coreos/<arch>/generic
    python_targets: tuple[str, ...] = ()  # what the board profiles build Python packages for
    extra_sysexts: tuple[str, ...] = ()  # build_library/extra_sysexts.sh entries, as the tree writes them

    @property
    def python_compat(self) -> str:
        """``PYTHON_COMPAT`` of our ebuilds at this tree (the targets it builds)."""
        return " ".join(self.python_targets)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def profile(self, arch: str) -> str:
        wanted = f"coreos/{arch}/generic"
        if wanted not in self.board_profiles:
            raise PiccoloError(f"{PROFILES_DESC}: no board profile {wanted}")
        return wanted


def _match(pattern: re.Pattern[str], text: str, path: Path, what: str) -> re.Match[str]:
    m = pattern.search(text)
    if m is None:
        raise PiccoloError(
            f"{path}: cannot find {what}",
            hint="has flatcar/scripts changed? (docs/flatcar.md lists what the build reads)",
        )
    return m


def _sysext_syntax(scripts_dir: Path, build_image: str) -> tuple[str | None, tuple[str, ...]]:
    """build_image's default --base_sysexts entries and the separator sysext_prod_builder splits them
    at; (None, ()) for a tree without base sysexts (build_image has no such flag)."""
    if "DEFINE_string base_sysexts" not in build_image:
        return None, ()
    default = _match(_BASE_SYSEXTS, build_image, scripts_dir / BUILD_IMAGE, "the base_sysexts default")
    entries = tuple(e for e in default["value"].split(",") if e)
    seps = set()
    for entry in entries:
        m = _ENTRY.fullmatch(entry)
        if m is None:
            raise PiccoloError(f"{scripts_dir / BUILD_IMAGE}: base_sysexts: cannot read entry {entry!r}")
        seps.add(m["sep"])
    builder = scripts_dir / SYSEXT_BUILDER
    split = _match(_SPLIT, read_text(builder), builder, 'how an entry is split (name="${sysext%...*}")')
    if seps - {split["sep"]}:
        raise PiccoloError(
            f"{builder}: splits entries at {split['sep']!r} but build_image's default list uses "
            + " ".join(sorted(seps))
        )
    return split["sep"], entries


def read_tree_facts(scripts_dir: Path) -> TreeFacts:
    """Read every fact from the checkout at ``scripts_dir``; raises :class:`PiccoloError` (one line)."""
    build_image = read_text(scripts_dir / BUILD_IMAGE)
    separator, entries = _sysext_syntax(scripts_dir, build_image)
    types = _match(_DEFAULT_TYPES, build_image, scripts_dir / BUILD_IMAGE, "the default image types")
    update = _match(_GENERATE_UPDATE, build_image, scripts_dir / BUILD_IMAGE, "the generate_update flag")
    vm_util = read_text(scripts_dir / VM_IMAGE_UTIL)
    oem = _match(_OEM, vm_util, scripts_dir / VM_IMAGE_UTIL, "IMG_qemu_uefi_OEM_SYSEXT")
    prebuilt = PREBUILT_OEM_MESSAGE in vm_util
    default_types = tuple(types["types"].split())
    if prebuilt and "oem_sysext)" not in build_image:
        raise PiccoloError(
            f"{scripts_dir / VM_IMAGE_UTIL}: wants a prebuilt OEM sysext; build_image has no oem_sysext type"
        )
    compression = _COMPRESSION.search(read_text(scripts_dir / RELEASE_UTIL)) is not None
    profiles = tuple(sorted(m["profile"] for m in _PROFILE.finditer(read_text(scripts_dir / PROFILES_DESC))))
    version_file = scripts_dir / VERSION_FILE
    extra = scripts_dir / EXTRA_SYSEXTS
    extra_text = read_text(extra) if extra.is_file() else ""
    extras = tuple(m["quoted"] or m["bare"] for m in _EXTRA_ENTRY.finditer(extra_text))
    return TreeFacts(
        flatcar_version=read_value(version_file, VERSION_KEY),
        sdk_version=read_value(version_file, SDK_KEY),
        sysext_separator=separator,
        default_base_sysexts=entries,
        default_image_types=default_types,
        generate_update_default=update["value"] == "TRUE",
        qemu_uefi_oem_sysext=oem["name"] or None,
        prebuilt_oem_sysext=prebuilt,
        compression_flags=compression,
        board_profiles=profiles,
        python_targets=read_python_targets(scripts_dir),
        extra_sysexts=extras,
    )


def read_python_targets(scripts_dir: Path) -> tuple[str, ...]:
    """The Python implementations every board profile builds for (one line naming the file if the
    profiles disagree or name one the tree's python-utils-r1 eclass does not know)."""
    from piccolo_build.portage.bash import words
    from piccolo_build.portage.profile import load_profile

    eclass = scripts_dir / PYTHON_ECLASS
    known = set(words(_match(_ALL_IMPLS, read_text(eclass), eclass, "_PYTHON_ALL_IMPLS")["impls"]))
    found = {}
    for arch in BOARD_ARCHES:
        profile = load_profile(repositories(scripts_dir), "coreos-overlay", f"coreos/{arch}/generic")
        found[arch] = profile.python_targets()
    targets = found[BOARD_ARCHES[0]]
    where = scripts_dir / COREOS_OVERLAY / "profiles"
    if any(t != targets for t in found.values()):
        raise PiccoloError(f"{where}: the board profiles build different Python targets: {found}")
    unknown = sorted(set(targets) - known)
    if unknown:
        raise PiccoloError(f"{where}: PYTHON_TARGETS {' '.join(unknown)} unknown to {eclass}")
    return targets


def repositories(scripts_dir: Path) -> dict[str, Path]:
    """The checkout's repositories by name, in priority order (coreos-overlay over portage-stable)."""
    return {"coreos-overlay": scripts_dir / COREOS_OVERLAY, "portage-stable": scripts_dir / PORTAGE_STABLE}


# What `plan` says it will read when there is no checkout yet.
READS = (
    f"{BUILD_IMAGE}: Flatcar's --base_sysexts list and its name/packages separator (':' or '|'), "
    "the default image types, whether the update payload is made by default",
    f"{SYSEXT_BUILDER}: how an entry is split (must agree with build_image)",
    f"{VM_IMAGE_UTIL}: the qemu_uefi OEM sysext, and whether image_to_vm.sh needs it prebuilt",
    f"{RELEASE_UTIL}: image_to_vm.sh's --image_compression_formats",
    f"{VERSION_FILE}: FLATCAR_VERSION and FLATCAR_SDK_VERSION",
    f"{PROFILES_DESC}: the board profiles coreos/<arch>/generic, and through their stack the Python "
    "targets the board builds (PYTHON_COMPAT of our ebuilds)",
    f"{EXTRA_SYSEXTS}: Flatcar's extra sysexts (their packages are published as binary packages)",
)
