"""The host programs the VM harness runs, each with the Debian package that has it (build.py installs
them for the test suite): a missing one is one clear error naming the package."""

from __future__ import annotations

from piccolo_build.errors import PiccoloError
from piccolo_build.run import which

PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "swtpm": "swtpm",
    "cgpt": "cgpt",
    "sgdisk": "gdisk",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "depmod": "kmod",
    "debootstrap": "debootstrap",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "chroot": "coreutils",
    "cp": "coreutils",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "scp": "openssh-client",
}


def need(program: str) -> str:
    """The path of ``program``, or a :class:`PiccoloError` that says which package to install."""
    found = which(program)
    if found is None:
        pkg = PACKAGES.get(program, program)
        raise PiccoloError(f"{program} not found", hint=f"apt-get install {pkg} (python3 build.py test does)")
    return found
