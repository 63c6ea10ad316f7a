"""A client of qemu-guest-agent over its virtio-serial port (a unix socket on the host): commands reach the
stand-in without a network. JSON lines; ``guest-sync`` first, because the port keeps whatever an earlier
client left unread."""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class QgaError(Exception):
    """The guest agent did not answer, or answered with an error."""


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.code == 0


class Qga:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(self.path))
            self._sock = s
        return self._sock

    def _read(self, deadline: float) -> dict[str, Any]:
        sock = self._connect()
        while True:
            line, nl, rest = self._buf.partition(b"\n")
            if nl:
                self._buf = rest
                text = line.strip(b"\xff \r\t")
                if text:
                    try:
                        msg = json.loads(text)
                    except ValueError:
                        continue
                    if isinstance(msg, dict):
                        return msg
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise QgaError("no answer from the guest agent")
            sock.settimeout(min(left, 1.0))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                self.close()
                raise QgaError("the guest agent's port closed")
            self._buf += data

    def _send(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self._connect().sendall(json.dumps(msg).encode() + b"\n")

    def sync(self, timeout: float = 3.0) -> None:
        """Raise :class:`QgaError` unless the agent answers within ``timeout``."""
        deadline = time.monotonic() + timeout
        token = random.randint(1, 2**31)  # noqa: S311 - a tag that tells this answer from stale ones
        try:
            self._send("guest-sync", {"id": token})
            while True:
                if self._read(deadline).get("return") == token:
                    return
        except OSError as exc:
            self.close()
            raise QgaError(f"guest agent: {exc}") from None

    def call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        self.sync(timeout)
        deadline = time.monotonic() + timeout
        try:
            self._send(command, arguments)
            msg = self._read(deadline)
        except OSError as exc:
            self.close()
            raise QgaError(f"guest agent: {exc}") from None
        if "error" in msg:
            raise QgaError(f"{command}: {msg['error'].get('desc', msg['error'])}")
        return msg.get("return")

    def exec(self, argv: list[str], timeout: float = 60.0) -> Result:
        """Run ``argv`` in the guest; its exit code and output."""
        started = self.call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})
        pid = started["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                code = status.get("exitcode", 128 + int(status.get("signal", 0)))
                return Result(int(code), out, err)
            time.sleep(0.2)
        raise QgaError(f"{' '.join(argv)}: still running after {timeout:g}s")

    def sh(self, script: str, timeout: float = 60.0) -> Result:
        return self.exec(["/bin/sh", "-c", script], timeout)

    def shutdown(self, mode: str = "powerdown") -> None:
        """Ask for a power-off or reboot; the agent does not answer this one."""
        self.sync()
        self._send("guest-shutdown", {"mode": mode})
