"""Which partition /usr is mounted from: the booted slot is what is mounted, not what a name points at.

Flatcar's own answer to "which slot did I boot" is ``rootdev -s /usr`` (flatcar/seismograph,
``src/rootdev``): the device of the first /usr entry of the mount table, through device-mapper to the
partition under it. :func:`find` does the same, more strictly, and ``piccolod-guard`` does exactly what
it does, in sh:

1. ``/proc/self/mountinfo``: every entry mounted at ``/usr`` (fields split on single spaces, ``\\ooo``
   escapes undone). A merged system extension puts an ``overlay`` on top of the real /usr, and a unit's
   ``ProtectSystem=`` adds bind mounts of it: overlays are passed over, and every other /usr entry must
   name the same block device, else the answer is unknown. An entry's device is its ``MAJOR:MINOR``;
   btrfs (Flatcar's /usr file system) reports an anonymous ``0:N`` there, so for btrfs the mount source
   (``/dev/mapper/usr``) must be a block device and its number counts. Anything else at /usr (tmpfs,
   squashfs from a PXE boot, no /usr mount at all) has no partition: unknown.
2. ``/sys/dev/block/MAJOR:MINOR``: a device-mapper device (``dm/``) must have exactly one device under
   it (``slaves/``) and that one is no device-mapper device; the result must be a partition (it has a
   ``partition`` file: its number), whose parent in sysfs is the disk; ``/dev/<disk>`` must be that
   disk's block device (same number). The partition's ``start`` and ``size`` come along, so the caller
   can hold the disk's GPT to what the kernel mounted.

Nothing here reads a ``/dev/disk/by-*`` link or a label: with two Flatcar disks attached (the same
PARTUUIDs on both) those name whichever partition udev saw last; the mount table does not.

Tests and the boot rig cannot mount a real /usr partition, so :func:`find` takes one override of step 1
(never of the checks that follow): ``device:PATH`` (a block device standing for the mounted one, walked
through sysfs like it) or ``image:N:PATH`` (partition N of a disk image, taken as mounted directly). The
default, and the only value an image is built with, is ``auto``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from piccolod.text import printable

AUTO = "auto"
MOUNTINFO = Path("/proc/self/mountinfo")
SYS = Path("/sys")
DEV = Path("/dev")
_OCTAL = re.compile(rb"\\([0-3][0-7][0-7])")
_KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!._:+-]*")
_NUMBER = re.compile(r"[0-9]{1,19}")
_SPEC = re.compile(r"(auto)|device:(/.*)|image:([1-9][0-9]{0,5}):(/.*)", re.DOTALL)


class UsrError(Exception):
    """/usr is not mounted from a partition that can be named; ``str()`` is one line."""


@dataclass(frozen=True)
class UsrPartition:
    """The partition /usr is mounted from."""

    disk: str  # the whole disk's device node (an image file with ``image:``)
    number: int  # the partition's number, its GPT entry
    kernel_name: str | None  # "vda3" (None with ``image:``)
    mapper: str | None  # the device-mapper name /usr is mounted through ("usr"), None when mounted directly
    start: int | None  # the kernel's start and size of the partition, 512-byte sectors (None with image:)
    size: int | None
    found: str  # how it was found, in words

    @property
    def node(self) -> str | None:
        """The partition's own device node (None with ``image:``)."""
        if self.kernel_name is None:
            return None
        return str(Path(self.disk).parent / self.kernel_name.replace("!", "/"))


def valid_spec(spec: str) -> bool:
    """Whether ``spec`` is ``auto``, ``device:/PATH`` or ``image:N:/PATH``."""
    return _SPEC.fullmatch(spec) is not None and "\n" not in spec


@dataclass(frozen=True)
class _Mount:
    mount_id: bytes
    parent: bytes
    major: int
    minor: int
    point: bytes
    fstype: bytes
    source: bytes


def _unescape(field: bytes) -> bytes:
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def _mounts(path: Path) -> Iterator[tuple[int, _Mount]]:
    """Every line of a mountinfo file, parsed; raises :class:`UsrError` on a line that does not parse."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise UsrError(f"{path}: cannot read the mount table: {e.strerror}") from None
    with f:
        for n, raw in enumerate(f, 1):
            fields = raw.rstrip(b"\n").split(b" ")
            sep = fields.index(b"-", 6) if b"-" in fields[6:] else -1
            dev = fields[2].split(b":") if len(fields) > 2 else []
            if (
                sep < 0
                or len(fields) != sep + 4
                or not all(re.fullmatch(rb"[0-9]{1,19}", x) for x in (fields[0], fields[1], *dev))
                or len(dev) != 2
            ):
                raise UsrError(f"{path}: line {n} is not a mount table entry")
            yield n, _Mount(
                fields[0], fields[1], int(dev[0]), int(dev[1]), _unescape(fields[4]), fields[sep + 1],
                _unescape(fields[sep + 2]),
            )  # fmt: skip


def _printable(data: bytes) -> str:
    return printable(data.decode("utf-8", "backslashreplace"), 200)


def mounted_device(mountinfo: Path = MOUNTINFO) -> tuple[int, int, str]:
    """The block device /usr is mounted from: (major, minor, the mount in words)."""
    devices: dict[tuple[int, int], str] = {}
    seen = False
    for _n, m in _mounts(mountinfo):
        if m.point != b"/usr":
            continue
        seen = True
        what = f"{_printable(m.fstype)} {_printable(m.source)}"
        if m.fstype == b"overlay":
            continue
        if m.major:
            devices[(m.major, m.minor)] = what
            continue
        if m.fstype != b"btrfs" or not m.source.startswith(b"/") or b"\0" in m.source:
            raise UsrError(f"/usr is a {what} mount, not a block device: no /usr partition")
        try:
            st = Path(os.fsdecode(m.source)).stat()
        except OSError as e:
            raise UsrError(f"/usr is a {what} mount and {_printable(m.source)}: {e.strerror}") from None
        if not stat.S_ISBLK(st.st_mode):
            raise UsrError(f"/usr is a {what} mount and {_printable(m.source)} is not a block device")
        devices[(os.major(st.st_rdev), os.minor(st.st_rdev))] = what
    if not seen:
        raise UsrError("nothing is mounted on /usr itself (a PXE or container boot?): no /usr partition")
    if not devices:
        raise UsrError("only overlays are mounted on /usr: no /usr partition")
    if len(devices) > 1:
        names = ", ".join(f"{a}:{b}" for a, b in sorted(devices))
        raise UsrError(f"/usr is mounted from more than one device ({names})")
    ((major, minor), what), = devices.items()  # fmt: skip
    return major, minor, f"/usr is {what} ({major}:{minor})"


def _first_line(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsrError(f"{path}: {e.strerror}") from None
    return data.split(b"\n", 1)[0].decode("ascii", "backslashreplace")


def _number(path: Path) -> int:
    text = _first_line(path)
    if not _NUMBER.fullmatch(text):
        raise UsrError(f"{path}: not a number")
    return int(text)


def _name(path: Path) -> str:
    if not _KERNEL_NAME.fullmatch(path.name):
        raise UsrError(f"{path}: not a kernel device name")
    return path.name


def partition_of(
    major: int, minor: int, found: str, *, sys_root: Path = SYS, dev_root: Path = DEV
) -> UsrPartition:
    """The partition under block device ``major:minor`` (through one device-mapper device at most)."""
    link = sys_root / "dev" / "block" / f"{major}:{minor}"
    try:
        device = link.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UsrError(f"{link}: no such block device") from None
    if not device.is_dir():
        raise UsrError(f"{link}: no such block device")
    mapper = None
    part = device
    if (device / "dm").is_dir():
        mapper = _first_line(device / "dm" / "name")
        try:
            below = sorted(p.name for p in (device / "slaves").iterdir())
        except OSError as e:
            raise UsrError(f"{device / 'slaves'}: {e.strerror}") from None
        if len(below) != 1:
            raise UsrError(
                f"device-mapper device {device.name} ({mapper}) is over {len(below)} devices, not one"
            )
        try:
            part = (device / "slaves" / below[0]).resolve(strict=True)
        except (OSError, RuntimeError):
            raise UsrError(f"{device / 'slaves' / below[0]}: no such device") from None
        if (part / "dm").is_dir():
            raise UsrError(f"device-mapper device {device.name} is over another one ({part.name})")
        found += f" through device-mapper {device.name} ({mapper})"
    kernel_name = _name(part)
    if not (part / "partition").is_file():
        raise UsrError(
            f"{kernel_name} is not a partition (a whole disk, or a loop device without partitions)"
        )
    number = _number(part / "partition")
    disk_dir = part.parent
    disk_name = _name(disk_dir)
    want = _first_line(disk_dir / "dev")
    node = dev_root / disk_name.replace("!", "/")
    try:
        st = node.stat()
    except OSError as e:
        raise UsrError(f"{node}: {e.strerror}") from None
    have = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if not stat.S_ISBLK(st.st_mode) or have != want:
        raise UsrError(f"{node} is not the block device {want} of disk {disk_name}")
    return UsrPartition(
        str(node), number, kernel_name, mapper, _number(part / "start"), _number(part / "size"),
        f"{found} on partition {number} ({kernel_name}) of {node}",
    )  # fmt: skip


def find(
    spec: str = AUTO, *, mountinfo: Path = MOUNTINFO, sys_root: Path = SYS, dev_root: Path = DEV
) -> UsrPartition:
    """The partition /usr is mounted from (``spec``: see the module docstring); raises :class:`UsrError`."""
    m = _SPEC.fullmatch(spec)
    if m is None or "\n" in spec:
        raise UsrError(f"{spec!r}: not auto, device:/PATH or image:N:/PATH")
    if m.group(1):
        return partition_of(*mounted_device(mountinfo), sys_root=sys_root, dev_root=dev_root)
    if m.group(2):
        path = m.group(2)
        try:
            st = Path(path).stat()
        except OSError as e:
            raise UsrError(f"{path}: {e.strerror}") from None
        if not stat.S_ISBLK(st.st_mode):
            raise UsrError(f"{path}: not a block device")
        found = f"/usr stands for {path} (override {spec})"
        return partition_of(
            os.major(st.st_rdev), os.minor(st.st_rdev), found, sys_root=sys_root, dev_root=dev_root
        )
    number, path = int(m.group(3)), m.group(4)
    return UsrPartition(
        path, number, None, None, None, None, f"partition {number} of {path} (override {spec})"
    )
