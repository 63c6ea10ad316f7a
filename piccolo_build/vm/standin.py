"""Build the stand-in machine of a boot model (:mod:`.models`), or reuse it: everything lands in
``CACHE/standin/<model>-<key>/``, where the key is a digest of every input (the model, the kernel package,
the model's package tree, the staged Piccolo OS files and the agent's source, the code that makes the
machine). A change to any of them builds a new one; the model's old one is removed, the other models'
stay.

Made without mounting anything: the file systems with ``mkfs.ext4 -d``, the disk with ``sgdisk`` and a
sparse copy of each partition, the marker files of the broken and held slots with ``debugfs``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import piccolod
from piccolo_build.config import BuildConfig
from piccolo_build.run import run
from piccolo_build.vm import disk, dracut, guest, initrd, kernel, models
from piccolo_build.vm.models import Model
from piccolo_build.vm.tools import need

PYTHONPATH = "/usr/lib/piccolod/python"  # where the sysext carries the agent's code in the stand-in
CACHE_VARIABLE = "PICCOLO_TEST_CACHE"


@dataclass(frozen=True)
class Standin:
    """A built stand-in: what the harness boots."""

    where: Path
    key: str
    built: bool  # False: taken from the cache
    seconds: float
    model: Model = models.LATE

    @property
    def disk(self) -> Path:
        return self.where / "disk.raw"

    @property
    def vmlinuz(self) -> Path:
        return self.where / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.where / "initrd.img"

    def usr(self, variant: str) -> Path:
        """``a`` (the image's /usr), ``holds`` or ``fails`` (the same with the gate's marker)."""
        return self.where / f"usr-{variant}.ext4"


def default_cache() -> Path:
    base = os.environ.get(CACHE_VARIABLE)
    return (Path(base) if base else Path(".venv/test-cache")).resolve() / "vm"


def _digest_tree(h: hashlib._Hash, root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        h.update(str(path.relative_to(root)).encode() + b"\0")
        if path.is_symlink():
            h.update(str(path.readlink()).encode())
        elif path.is_file():
            h.update(path.read_bytes())


def _stage(cfg: BuildConfig, work: Path) -> Path:
    from piccolo_build.stage import Launcher, squash, stage

    out = stage(
        cfg, work / "stage", Launcher("/usr/bin/python3", PYTHONPATH, {"PYTHONDONTWRITEBYTECODE": "1"})
    )
    agent = out / "sysext" / PYTHONPATH.lstrip("/") / "piccolod"
    shutil.copytree(Path(piccolod.__file__).parent, agent, ignore=shutil.ignore_patterns("__pycache__"))
    squash(out / "sysext", out / "piccolod.raw")
    return out


def _mkfs(image: Path, size_mib: int, tree: Path | None, *, label: str | None = None) -> Path:
    image.unlink(missing_ok=True)
    args: list[str | Path] = [need("mkfs.ext4"), "-q", "-F", "-E", "lazy_itable_init=1"]
    if label:
        args += ["-L", label]
    if tree is not None:
        args += ["-d", tree]
    run([*args, image, f"{size_mib}M"])
    return image


def _with_marker(src: Path, dest: Path, marker: str) -> Path:
    disk.sparse_copy(src, dest)
    empty = dest.with_suffix(".empty")
    empty.write_bytes(b"")
    run([need("debugfs"), "-w", "-R", f"write {empty} {marker.removeprefix('/usr')}", dest])
    empty.unlink()
    return dest


def _remove_stale(standins: Path, model: Model, *, keep: str) -> None:
    """Remove ``model``'s other stand-ins (and unfinished builds, and the unnamed ones of before there
    were models); the other models' stay."""
    others = tuple(f"{m.name}-" for m in models.MODELS if m is not model)
    for old in standins.iterdir():
        if old.name == keep or old.name.lstrip(".").startswith(others):
            continue
        shutil.rmtree(old, ignore_errors=True)


def build(
    cfg: BuildConfig,
    cache: Path,
    *,
    model: Model = models.LATE,
    say: Callable[[str], None] = lambda _m: None,
) -> Standin:
    """The stand-in of ``model`` for ``cfg``, from the cache when its inputs are unchanged."""
    started = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    say("kernel: Debian's linux-image-amd64")
    k = kernel.fetch(cache)  # the same kernel for every model
    say(f"package tree: debootstrap {model.suite}")
    tree = guest.debootstrap(cache, model.suite)
    work = Path(tempfile.mkdtemp(prefix="standin.", dir=cache))
    try:
        staged = _stage(cfg, work)
        h = hashlib.sha256()
        h.update(repr(model).encode() + k.package.encode() + (tree / ".piccolo-vm-tree").read_bytes())
        for module in (disk, dracut, guest, initrd, kernel, models):
            h.update(Path(str(module.__file__)).read_bytes())
        h.update(Path(__file__).read_bytes())
        _digest_tree(h, staged / "base")
        _digest_tree(h, staged / "sysext")
        key = h.hexdigest()[:16]
        name = f"{model.name}-{key}"
        where = cache / "standin" / name
        if (where / ".done").exists():
            return Standin(where, key, False, time.monotonic() - started, model)
        say(f"stand-in {name}: configure the guest")
        root = work / "root"
        run([need("cp"), "-a", tree, root])
        (root / ".piccolo-vm-tree").unlink()
        guest.configure(
            root, model=model, modules=k.modules, base=staged / "base", sysext_raw=staged / "piccolod.raw"
        )
        (root / "usr").rename(work / "usr")
        (root / "usr").mkdir()
        tmp = cache / "standin" / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        say(f"stand-in {name}: file systems")
        usr_a = _mkfs(tmp / "usr-a.ext4", 1000, work / "usr")
        _with_marker(usr_a, tmp / "usr-holds.ext4", guest.GATE_HOLDS)
        _with_marker(usr_a, tmp / "usr-fails.ext4", guest.GATE_FAILS)
        root_fs = _mkfs(work / "root.ext4", 3000, root, label="ROOT")
        oem = _mkfs(work / "oem.ext4", 16, None, label="OEM")
        say(f"stand-in {name}: disk, initrd ({model.initrd})")
        disk.make_disk(tmp / "disk.raw", {3: usr_a, 6: oem, 9: root_fs})
        shutil.copyfile(k.vmlinuz, tmp / "vmlinuz")
        if model.initrd == "dracut":
            dracut.build(tree, k, tmp / "initrd.img")
        else:
            initrd.build(k, tmp / "initrd.img")
        (tmp / ".done").write_text(key)
        _remove_stale(cache / "standin", model, keep=tmp.name)
        tmp.rename(where)
        return Standin(where, key, True, time.monotonic() - started, model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
