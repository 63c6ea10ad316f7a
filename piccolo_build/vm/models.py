"""The boot models the stand-in machine can boot: where the piccolod system extension is merged, and so
which Flatcar releases a run stands for. Neither is a real Flatcar boot (docs/vm-test.md).

- ``late``: Debian trixie's systemd 257 (Flatcar stable's version), our busybox initrd; the guest's
  ``systemd-sysext.service`` merges the extension after the switch to the real root.
- ``initrd``: Debian sid's systemd (262), a dracut-made systemd initrd; ``systemd-sysext-sysroot.service``
  merges the extension into ``/sysroot/usr`` before the switch, so piccolod.service is in PID 1's first
  transaction, as on Flatcar beta and alpha (systemd 260).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    name: str  # what --model takes
    suite: str  # the Debian suite of the userspace (and of the initrd's systemd)
    initrd: str  # "busybox" (piccolo_build.vm.initrd) or "dracut" (piccolo_build.vm.dracut)
    flatcar: str  # the Flatcar releases it stands for
    description: str  # one line

    @property
    def merges_in_initrd(self) -> bool:
        return self.initrd == "dracut"


LATE = Model(
    "late", "trixie", "busybox", "stable-4593 (systemd 257)",
    "sysext merged late by the guest's systemd-sysext.service after switch-root, as on Flatcar stable-4593",
)  # fmt: skip
INITRD = Model(
    "initrd", "sid", "dracut", "beta-4757, alpha-4790 (systemd 260)",
    "sysext merged into /sysroot/usr in a systemd initrd, as on Flatcar beta-4757 and alpha-4790",
)  # fmt: skip
MODELS = (LATE, INITRD)
BY_NAME = {m.name: m for m in MODELS}
