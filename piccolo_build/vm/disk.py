"""Flatcar's disk, as the stand-in machine has it: the GPT layout, the fixed USR slot PARTUUIDs, the slot
bits, and GRUB's ``gptprio.next``, which the harness plays on the image file between boots.

The layout is Flatcar's ``build_library/disk_layout.json`` (partitions 5 and 8 have no entry there
either); sizes are smaller. The slot bits of a ``flatcar-usr`` partition are attribute bits 48-51
(priority), 52-55 (tries) and 56 (successful). They are read with the agent's own GPT reader
(:mod:`piccolod.gpt`) and written with ``cgpt``, the tool Flatcar's scripts use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from piccolo_build.errors import PiccoloError
from piccolo_build.run import run
from piccolo_build.vm.tools import need

USR_TYPE = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6"
USR_A = "7130c94a-213a-4e5a-8e26-6cce9662f132"
USR_B = "e03dd35c-7c2d-4a47-b3fe-27f15780a57c"
SLOTS = {"USR-A": (3, USR_A), "USR-B": (4, USR_B)}
ROOT_NUMBER = 9
MIB = 1024 * 1024


@dataclass(frozen=True)
class Part:
    number: int
    label: str
    type_guid: str
    mib: int
    partuuid: str | None = None


# Flatcar's numbers, labels and types; sizes shrunk to what the stand-in needs (the image is sparse).
LAYOUT = (
    Part(1, "EFI-SYSTEM", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", 16),
    Part(2, "BIOS-BOOT", "21686148-6449-6e6f-744e-656564454649", 2),
    Part(3, "USR-A", USR_TYPE, 1024, USR_A),
    Part(4, "USR-B", USR_TYPE, 1024, USR_B),
    Part(6, "OEM", "0fc63daf-8483-4772-8e79-3d69d8477de4", 16),
    Part(7, "OEM-CONFIG", "c95dc21a-df0e-4340-8d7b-26cbfa9a03e0", 4),
    Part(ROOT_NUMBER, "ROOT", "3884dd41-8582-4404-b9a8-e9b84f2df50e", 3072),
)
FIRST_MIB = 2  # partitions start 2 MiB in, as Flatcar aligns them


def offsets() -> dict[int, tuple[int, int]]:
    """Partition number -> (byte offset, byte size) in the layout."""
    out, at = {}, FIRST_MIB
    for p in LAYOUT:
        out[p.number] = (at * MIB, p.mib * MIB)
        at += p.mib
    return out


def disk_bytes() -> int:
    return (FIRST_MIB + sum(p.mib for p in LAYOUT) + 2) * MIB


def make_disk(path: Path, contents: dict[int, Path]) -> Path:
    """A sparse disk with the layout (``sgdisk``), each ``contents`` image copied into its partition,
    USR-A priority 1 successful 1, USR-B all zero (what Flatcar's image builder leaves)."""
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.truncate(disk_bytes())
    args: list[str] = [need("sgdisk"), "--zap-all"]
    off = offsets()
    for p in LAYOUT:
        start, size = off[p.number]
        args += [
            f"--new={p.number}:{start // 512}:{(start + size) // 512 - 1}",
            f"--typecode={p.number}:{p.type_guid}",
            f"--change-name={p.number}:{p.label}",
        ]
        if p.partuuid:
            args.append(f"--partition-guid={p.number}:{p.partuuid}")
    run([*args, path])
    for number, image in contents.items():
        put_partition(path, number, image)
    set_slot(path, "USR-A", priority=1, tries=0, successful=True)
    set_slot(path, "USR-B", priority=0, tries=0, successful=False)
    return path


def put_partition(disk: Path, number: int, image: Path) -> None:
    """Copy ``image`` into partition ``number`` of ``disk``, keeping both sparse (zero blocks are holes)."""
    start, size = offsets()[number]
    if image.stat().st_size > size:
        raise PiccoloError(f"{image}: {image.stat().st_size} bytes do not fit partition {number} ({size})")
    copy_range(image, 0, disk, start, image.stat().st_size, clear=size)


def sparse_copy(src: Path, dest: Path) -> Path:
    """A copy of ``src`` whose zero blocks are holes: the images are mostly empty, and there are many."""
    run([need("cp"), "--sparse=always", src, dest])
    return dest


def copy_range(src: Path, src_off: int, dst: Path, dst_off: int, length: int, *, clear: int = 0) -> None:
    """Copy bytes sparsely; with ``clear``, the destination range of that size is punched to zero first."""
    block = MIB
    zero = bytes(block)
    with src.open("rb") as fi, dst.open("r+b") as fo:
        if clear:
            _punch(fo.fileno(), dst_off, clear)
        fi.seek(src_off)
        done = 0
        while done < length:
            data = fi.read(min(block, length - done))
            if not data:
                break
            if data != zero[: len(data)]:
                fo.seek(dst_off + done)
                fo.write(data)
            done += len(data)


def _punch(fd: int, offset: int, length: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if libc.fallocate(fd, 3, ctypes.c_long(offset), ctypes.c_long(length)) == 0:
            return
    except OSError:
        pass
    zero = bytes(MIB)
    for at in range(offset, offset + length, MIB):
        os.pwrite(fd, zero[: min(MIB, offset + length - at)], at)


def copy_slot(disk: Path, src: str, dst: str) -> None:
    """kola's simulated update: the bytes of slot ``src`` onto slot ``dst`` (the whole partition)."""
    off = offsets()
    s, size = off[SLOTS[src][0]]
    d, _ = off[SLOTS[dst][0]]
    copy_range(disk, s, disk, d, size, clear=size)


@dataclass(frozen=True)
class Slot:
    label: str
    number: int
    partuuid: str
    priority: int
    tries: int
    successful: bool

    def bits(self) -> str:
        return f"P{self.priority} T{self.tries} S{int(self.successful)}"


def slots(disk: Path) -> dict[str, Slot]:
    """The USR slots of ``disk`` as its GPT says (the agent's reader)."""
    from piccolod.gpt import FLATCAR_USR_TYPE, GptError, read_table

    try:
        table = read_table(disk)
    except GptError as exc:
        raise PiccoloError(f"{disk}: {exc}") from None
    return {
        p.name: Slot(p.name, p.number, str(p.unique_guid), p.priority, p.tries, p.successful)
        for p in table.partitions
        if p.type_guid == FLATCAR_USR_TYPE
    }


def set_slot(disk: Path, label: str, *, priority: int, tries: int, successful: bool) -> None:
    number = SLOTS[label][0]
    run([need("cgpt"), "add", "-i", str(number), "-P", str(priority), "-T", str(tries),
         "-S", str(int(successful)), disk])  # fmt: skip


def install_update(disk: Path, label: str) -> None:
    """flatcar-postinst on ``label``: successful=0, tries=1, the top priority; the other slot below it."""
    for other, s in slots(disk).items():
        if other != label and s.priority > 0:
            set_slot(disk, other, priority=1, tries=s.tries, successful=s.successful)
    set_slot(disk, label, priority=2, tries=1, successful=False)


def gptprio_next(disk: Path) -> Slot:
    """GRUB's ``gptprio.next``: of the USR slots with priority > 0 and tries > 0 or successful=1, the one
    with the highest priority (the lower number on a tie); its tries are decremented. The slot chosen."""
    usable = [s for s in slots(disk).values() if s.priority > 0 and (s.tries > 0 or s.successful)]
    if not usable:
        raise PiccoloError(f"{disk}: no bootable USR slot (GRUB would stop here)")
    best = max(usable, key=lambda s: (s.priority, -s.number))
    if best.tries > 0:
        set_slot(disk, best.label, priority=best.priority, tries=best.tries - 1, successful=best.successful)
    return best
