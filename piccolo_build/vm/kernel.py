"""The stand-in's kernel: Debian's ``linux-image-amd64`` of the host's suite, downloaded as a package (never
installed on the host) and unpacked; its module tree trimmed to what a virtio guest with docker loads."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from piccolo_build.errors import PiccoloError
from piccolo_build.run import run
from piccolo_build.vm.tools import need

META_PACKAGE = "linux-image-amd64"
# Driver directories a QEMU guest with virtio devices, a TPM and docker uses; everything else goes.
KEEP_DRIVERS = frozenset(
    {
        "virtio",
        "block",
        "char",
        "md",
        "net",
        "acpi",
        "base",
        "input",
        "hid",
        "firmware",
        "nvdimm",
        "scsi",
        "tty",
        "rtc",
        "ptp",
        "pps",
    }
)


@dataclass(frozen=True)
class Kernel:
    version: str  # "6.1.0-57-amd64"
    vmlinuz: Path
    modules: Path  # the trimmed lib/modules/<version>
    package: str  # the .deb's file name: what the cache is keyed on


def _image_package() -> str:
    out = run([need("apt-cache"), "depends", META_PACKAGE]).stdout
    found = re.search(r"Depends: (linux-image-[0-9][^\s]*)", out)
    if found is None:
        raise PiccoloError(f"apt-cache knows no {META_PACKAGE}", hint="apt-get update")
    return found.group(1)


def fetch(cache: Path) -> Kernel:
    """Download and unpack the kernel into ``cache/kernel`` (reused while the package is the same)."""
    where = cache / "kernel"
    where.mkdir(parents=True, exist_ok=True)
    name = _image_package()
    debs = sorted(where.glob(f"{name}_*.deb"))
    if not debs:
        run([need("apt-get"), "download", name], cwd=where)
        debs = sorted(where.glob(f"{name}_*.deb"))
    if not debs:
        raise PiccoloError(f"apt-get download {name} left no package in {where}")
    deb = debs[-1]
    tree = where / deb.stem
    if not (tree / ".done").exists():
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "x").mkdir(parents=True)
        run([need("dpkg-deb"), "-x", deb, tree / "x"])
        version = next((tree / "x/lib/modules").iterdir()).name
        _trim(tree, version)
        (tree / ".done").write_text(version)
    version = (tree / ".done").read_text()
    return Kernel(
        version, tree / f"x/boot/vmlinuz-{version}", tree / "modules/lib/modules" / version, deb.name
    )


def _trim(tree: Path, version: str) -> None:
    src = tree / "x/lib/modules" / version
    dst = tree / "modules/lib/modules" / version
    shutil.copytree(src, dst, symlinks=True)
    drivers = dst / "kernel/drivers"
    for sub in drivers.iterdir():
        if sub.name not in KEEP_DRIVERS:
            shutil.rmtree(sub)
    for sub in (drivers / "net").iterdir():  # the network cards; virtio_net, tun, veth stay (top level)
        if sub.is_dir():
            shutil.rmtree(sub)
    shutil.rmtree(dst / "kernel/sound", ignore_errors=True)
    run([need("depmod"), "-b", tree / "modules", version])


def module_closure(modules: Path, wanted: list[str]) -> list[Path]:
    """The ``.ko`` files of ``wanted`` and everything they depend on, dependencies first (modules.dep)."""
    deps: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.removesuffix(".ko"): p for p in deps}
    order: list[str] = []

    def add(path: str) -> None:
        if path in order:
            return
        for d in deps.get(path, []):
            add(d)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise PiccoloError(f"kernel module {name} is not in {modules}")
        add(by_name[name])
    return [modules / p for p in order]
