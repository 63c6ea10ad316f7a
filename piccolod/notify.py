"""The systemd notification protocol (sd_notify(3)), written out: a datagram to ``$NOTIFY_SOCKET``.

``notify("READY=1", "STATUS=...")`` sends one datagram of newline-separated assignments. Without
``NOTIFY_SOCKET`` it does nothing; it never raises (a broken socket must not take the agent down) and
returns whether the datagram was sent. A socket name starting with ``@`` is in the abstract namespace.
:func:`watchdog_seconds` reads ``WATCHDOG_USEC`` (and ``WATCHDOG_PID`` when set) as sd_watchdog_enabled(3)
does.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def _address(env: Mapping[str, str]) -> str | None:
    name = env.get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None  # vsock and other schemes are not used on a Piccolo device


def _clean(line: str) -> str:
    return " ".join(line.split("\n"))


def notify(*lines: str, env: Mapping[str, str] | None = None) -> bool:
    """Send the assignments in ``lines`` to systemd; a no-op without ``NOTIFY_SOCKET``."""
    try:
        address = _address(os.environ if env is None else env)
        if address is None or not lines:
            return False
        data = "\n".join(_clean(line) for line in lines).encode("utf-8", "replace")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.sendto(data, address)
    except Exception:  # notification is best effort by design
        return False
    return True


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog_seconds(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog interval systemd expects pings within, or None when the watchdog is off."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = env.get("WATCHDOG_PID")
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None
