"""The stand-in's initrd: a few hundred kilobytes instead of a systemd initrd, so a boot under TCG spends
about a second here rather than ten.

Debian's kernel has the virtio and ext4 drivers as modules, so something must load them before ``/`` can be
mounted. This initrd holds a static busybox, those modules and :data:`INIT`, which does what Flatcar's
initrd does for ``/usr``: it mounts the ``ROOT`` partition as ``/`` and the partition named by
``mount.usr=PARTUUID=...`` read-only on ``/usr`` (no dm-verity), then hands over to systemd. The PARTUUID is
looked up in the GPT entries of the disks in their order (``vda`` first), so with two Flatcar disks the
first one's slot is the one mounted, and ``ROOT`` is the partition of that name on the same disk. When the
slot cannot be mounted (no file system, no systemd on it) it says so on the console and reboots, as a
Flatcar machine whose ``/usr`` is broken ends up doing; the harness then plays GRUB again.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Iterable
from pathlib import Path

from piccolo_build.errors import PiccoloError
from piccolo_build.vm.kernel import Kernel, module_closure

BUSYBOX = Path("/bin/busybox")
MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]  # ext4 asks for crc32c at mount time
PROBE_MARK = "piccolo-vm: probe ok"
USR_FAIL_MARK = "piccolo-vm: /usr cannot be mounted"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /lib/modules/order
cmdline=$(cat /proc/cmdline)
fail() { echo "__USRFAIL__ ($1): rebooting"; sleep 1; reboot -f; }
case " $cmdline " in *" piccolo_vm.probe "*) echo "__PROBE__"; poweroff -f ;; esac
usr=
for w in $cmdline; do case $w in mount.usr=PARTUUID=*) usr=${w#mount.usr=PARTUUID=} ;; esac; done
[ -n "$usr" ] || fail "no mount.usr=PARTUUID= on the command line"
u=$(echo "$usr" | tr -d - | tr A-F a-f)
want=${u:6:2}${u:4:2}${u:2:2}${u:0:2}${u:10:2}${u:8:2}${u:14:2}${u:12:2}${u:16:16}
i=0
while [ ! -e /sys/block/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
slot= root=
for disk in /sys/block/vd*; do
  d=${disk##*/}
  for p in "$disk/$d"*; do
    [ -e "$p/partition" ] || continue
    n=$(cat "$p/partition")
    guid=$(od -An -tx1 -j $((1024 + (n - 1) * 128 + 16)) -N16 "/dev/$d" | tr -d ' \n')
    if [ -z "$slot" ] && [ "$guid" = "$want" ]; then slot=${p##*/}; sdisk=$d; fi
  done
  [ -n "$slot" ] && break
done
[ -n "$slot" ] || fail "no partition has PARTUUID $usr"
for p in "/sys/block/$sdisk/$sdisk"*; do
  grep -qx PARTNAME=ROOT "$p/uevent" && root=${p##*/}
done
[ -n "$root" ] || fail "no ROOT partition on $sdisk"
mkdir -p /newroot
mount -t ext4 -o rw "/dev/$root" /newroot || fail "cannot mount ROOT /dev/$root"
mount -t ext4 -o ro "/dev/$slot" /newroot/usr || fail "no ext4 file system on /dev/$slot"
[ -x /newroot/usr/lib/systemd/systemd ] || { umount /newroot/usr; fail "no systemd on /dev/$slot"; }
echo "piccolo-vm: / from /dev/$root, /usr from /dev/$slot (PARTUUID=$usr)"
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /usr/lib/systemd/systemd
""".replace("__PROBE__", PROBE_MARK).replace("__USRFAIL__", USR_FAIL_MARK)


def _header(name: str, mode: int, size: int, ino: int, nlink: int = 1) -> bytes:
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0]
    head = "070701" + "".join(f"{v:08x}" for v in fields)
    data = head.encode() + name.encode() + b"\0"
    return data + b"\0" * (-len(data) % 4)


def cpio(entries: Iterable[tuple[str, int, bytes]]) -> bytes:
    """A ``newc`` cpio archive of (path, mode, content) entries (directories with S_IFDIR, no content)."""
    out = io.BytesIO()
    for ino, (name, mode, content) in enumerate(entries, start=1):
        out.write(_header(name, mode, len(content), ino, 2 if stat.S_ISDIR(mode) else 1))
        out.write(content + b"\0" * (-len(content) % 4))
    out.write(_header("TRAILER!!!", 0, 0, 0))
    return out.getvalue()


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    """The entries of ``newc`` cpio archives (one after the other, as initrds may be): path -> (mode,
    content); a symbolic link's content is its target."""
    entries: dict[str, tuple[int, bytes]] = {}
    at = 0
    while data.startswith(b"070701", at):
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        size, name_size = fields[6], fields[11]
        name = data[at + 110 : at + 110 + name_size - 1].decode()
        at += 110 + name_size
        at += -at % 4
        content = data[at : at + size]
        at += size
        at += -at % 4
        if name == "TRAILER!!!":
            while at < len(data) and data[at] == 0:  # the padding before a next archive
                at += 1
            continue
        entries[name] = (fields[1], content)
    return entries


def build(kernel: Kernel, dest: Path) -> Path:
    if not BUSYBOX.exists():
        raise PiccoloError(f"{BUSYBOX} not found", hint="apt-get install busybox-static")
    mods = module_closure(kernel.modules, MODULES)
    d = stat.S_IFDIR | 0o755
    entries: list[tuple[str, int, bytes]] = [
        (p, d, b"") for p in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "newroot")
    ]
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()))
    entries.append(("init", stat.S_IFREG | 0o755, INIT.encode()))
    entries += [(f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes()) for m in mods]
    order = "".join(f"{m.name}\n" for m in mods).encode()
    entries.append(("lib/modules/order", stat.S_IFREG | 0o644, order))
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(cpio(entries))
    tmp.replace(dest)
    return dest
