"""update_engine's status (a stand-in that prints the real client's lines), the watcher's pace and
baselines, and the update loop: N update checks after a rollback install the failed version zero times."""

from __future__ import annotations

import json
import os
import random
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from piccolod import updatehook
from piccolod.updates import engine, pin, watch
from piccolod.updates.engine import EngineError, EngineStatus, Op, parse_status
from tests.fixtures.httpserve import serving

STANDIN = Path(__file__).parent / "fixtures" / "update_engine_standin.py"
REAL = (
    b"LAST_CHECKED_TIME=1733600000\nPROGRESS=0.250000\nCURRENT_OP=UPDATE_STATUS_DOWNLOADING\n"
    b"NEW_VERSION=3975.2.0\nNEW_SIZE=456130560\n"
)


def test_the_clients_lines() -> None:
    st = parse_status(b"I1207 12:00:00 client.cc:242] Querying Update Engine status...\n" + REAL)
    assert st == EngineStatus(1733600000, 0.25, Op.DOWNLOADING, "3975.2.0", 456130560)
    assert st.offered_version == "3975.2.0"
    idle = parse_status(REAL.replace(b"3975.2.0", b"0.0.0").replace(b"DOWNLOADING", b"IDLE"))
    assert idle.offered_version == "" and idle.current_op is Op.IDLE


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no LAST_CHECKED_TIME, PROGRESS, CURRENT_OP, NEW_VERSION, NEW_SIZE"),
        (REAL.replace(b"UPDATE_STATUS_DOWNLOADING", b"(null)"), "unknown CURRENT_OP '(null)'"),
        (REAL + b"CURRENT_OP=UPDATE_STATUS_IDLE\n", "CURRENT_OP given twice"),
        (REAL.replace(b"0.250000", b"nan"), "PROGRESS is not 0-1"),
        (REAL.replace(b"0.250000", b"7"), "PROGRESS is not 0-1"),
        (REAL.replace(b"=456130560", b"=1" + b"0" * 30), "NEW_SIZE is not an integer"),
        (REAL.replace(b"3975.2.0", b"3975\x1b[2J"), "NEW_VERSION is not a version"),
    ],
)
def test_what_is_not_the_clients_output_is_one_line(data: bytes, message: str) -> None:
    with pytest.raises(EngineError) as info:
        parse_status(data)
    assert message in str(info.value)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


def test_random_output_is_a_status_or_an_engine_error() -> None:
    rng = random.Random(130)
    pieces = [REAL, b"\n", b"=", b"CURRENT_OP", b"\xff", b"\x00", b"NEW_VERSION=", b"9" * 50, b"\r"]
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        try:
            st = parse_status(data)
        except EngineError as e:
            assert "\n" not in str(e)
        else:
            assert isinstance(st.current_op, Op) and 0 <= st.progress <= 1
    assert len(parse_status(b"x" * 10_000_000 + b"\n" + REAL).new_version) == 8  # only the tail is read


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "machine"
    (root / "etc" / "flatcar").mkdir(parents=True)
    (root / "usr" / "share" / "flatcar").mkdir(parents=True)
    monkeypatch.setenv("STANDIN_ROOT", str(root))
    client = tmp_path / "update_engine_client"  # the agent runs it with an environment of its own
    client.write_text(f'#!/bin/sh\nSTANDIN_ROOT={root} exec {STANDIN} "$@"\n')
    client.chmod(0o755)
    monkeypatch.setenv(engine.CLIENT_ENV, str(client))
    monkeypatch.setenv(pin.UPDATE_CONF_ENV, str(root / "etc" / "flatcar" / "update.conf"))
    return root


def set_state(root: Path, op: Op, version: str = "0.0.0") -> None:
    (root / "update_engine.state.json").write_text(json.dumps({"op": str(op), "new_version": version}))


def test_query_and_reset_through_a_client(standin: Path) -> None:
    set_state(standin, Op.UPDATED_NEED_REBOOT, "3975.2.0")
    st = engine.query()
    assert (st.current_op, st.new_version) == (Op.UPDATED_NEED_REBOOT, "3975.2.0")
    engine.reset()
    assert engine.query().current_op is Op.IDLE
    set_state(standin, Op.DOWNLOADING, "3975.2.0")
    with pytest.raises(EngineError, match=r"-reset_status: exit status 1: Reset not allowed in this state\."):
        engine.reset()


def test_a_missing_or_hanging_client_is_an_engine_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(engine.CLIENT_ENV, str(tmp_path / "absent"))
    with pytest.raises(EngineError, match="cannot run: No such file"):
        engine.query()
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nsleep 30\n")
    hang.chmod(0o755)
    monkeypatch.setenv(engine.CLIENT_ENV, str(hang))
    with pytest.raises(EngineError, match=r"no answer within 0\.3s"):
        engine.query(timeout=0.3)


# --- the watcher -------------------------------------------------------------------------------------


def status(op: Op, version: str = "0.0.0") -> EngineStatus:
    return EngineStatus(0, 0.0, op, version, 0)


class Script:
    """update_engine's answers, one per poll (an exception is raised)."""

    def __init__(self, *answers: EngineStatus | EngineError) -> None:
        self.answers = list(answers)

    def __call__(self) -> EngineStatus:
        got = self.answers.pop(0)
        if isinstance(got, EngineError):
            raise got
        return got


def watcher(
    script: Script, pinned: str | None = None
) -> tuple[watch.Watcher, list[tuple[str, str]], list[int]]:
    taken: list[tuple[str, str]] = []
    resets: list[int] = []
    w = watch.Watcher(
        lambda trigger, st: taken.append((trigger, st.offered_version)),
        wait=lambda s: False,
        query=script,
        reset=lambda: resets.append(1),
        read_pin=lambda: pinned,
    )
    return w, taken, resets


def test_pace_and_baselines() -> None:
    err = EngineError("update_engine_client: cannot run: No such file or directory")
    w, taken, _ = watcher(
        Script(
            status(Op.IDLE),
            status(Op.CHECKING_FOR_UPDATE),
            status(Op.UPDATE_AVAILABLE, "3975.2.0"),
            status(Op.DOWNLOADING, "3975.2.0"),
            status(Op.FINALIZING, "3975.2.0"),
            status(Op.UPDATED_NEED_REBOOT, "3975.2.0"),
            status(Op.UPDATED_NEED_REBOOT, "3975.2.0"),
            *[err] * 8,
            status(Op.IDLE),
        )
    )
    pauses = [w.step() for _ in range(16)]
    assert pauses[:7] == [10.0, 1.0, 1.0, 1.0, 1.0, 10.0, 10.0]
    assert pauses[7:15] == [20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0, 300.0]  # backoff, capped at 5 min
    assert pauses[15] == 10.0  # back to the idle pace at once
    # One baseline at the first sign of the update, one refreshed when it waits for the reboot.
    assert taken == [("update_activity", "3975.2.0"), ("need_reboot", "3975.2.0")]
    assert w.seen.baselines == 2 and w.seen.error is None


def broken_baseline(trigger: str, st: EngineStatus) -> None:
    raise ZeroDivisionError


def test_a_failing_baseline_does_not_stop_the_watcher() -> None:
    w = watch.Watcher(
        broken_baseline,
        wait=lambda s: False,
        query=Script(status(Op.DOWNLOADING, "1.2.3"), status(Op.IDLE)),
        read_pin=lambda: None,
    )
    assert w.step() == 1.0 and w.step() == 10.0 and w.seen.baselines == 0


def test_the_second_line_forgets_a_pinned_version_that_arrived_anyway() -> None:
    w, _, resets = watcher(
        Script(*[status(Op.UPDATED_NEED_REBOOT, "3975.2.0")] * 3, status(Op.UPDATED_NEED_REBOOT, "3975.3.0")),
        pinned="3975.2.0",
    )
    for _ in range(4):
        w.step()
    assert resets == [1] and w.seen.pinned_applied == "3975.2.0"  # once, and not for another version


def test_the_watcher_thread_stops_with_the_agent(standin: Path) -> None:
    set_state(standin, Op.IDLE)
    stop = threading.Event()
    w = watch.Watcher(lambda t, s: None, wait=stop.wait)
    t = w.start()
    for _ in range(100):
        if w.seen.polls:
            break
        stop.wait(0.05)
    stop.set()
    t.join(5)
    assert not t.is_alive() and w.seen.status is not None and w.seen.status.current_op is Op.IDLE


# --- the update loop ---------------------------------------------------------------------------------


def newer(a: str, b: str) -> bool:
    return tuple(int(x) for x in a.split(".")) > tuple(int(x) for x in b.split("."))


class Omaha(BaseHTTPRequestHandler):
    """An update server's rule: offer the channel's version to a machine that runs an older one."""

    latest = "3975.2.0"
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        m = re.search(r'<app [^>]*version="([^"]*)"', body)
        version = m.group(1) if m else ""
        type(self).seen.append(version)
        if version and not newer(self.latest, version):
            check = '<updatecheck status="noupdate"></updatecheck>'
        else:
            check = f'<updatecheck status="ok"><manifest version="{self.latest}"></manifest></updatecheck>'
        answer = f'<response protocol="3.0"><app status="ok">{check}</app></response>'.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def omaha(standin: Path) -> Iterator[type[Omaha]]:
    handler = type("OmahaHere", (Omaha,), {"seen": [], "latest": "3975.2.0"})
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), handler)) as httpd:
        port = httpd.server_address[1]
        (standin / "usr/share/flatcar/update.conf").write_text(
            f"GROUP=stable\nSERVER=http://127.0.0.1:{port}/v1/update/\n"
        )
        (standin / "usr/share/flatcar/release").write_text("FLATCAR_RELEASE_VERSION=3815.2.5\n")
        yield handler


def check_for_update(root: Path) -> None:
    import subprocess

    subprocess.run([str(STANDIN), "-check_for_update"], check=True, timeout=30, env=dict(os.environ))


def installs(root: Path) -> list[str]:
    log = root / "installs.log"
    return log.read_text().split() if log.exists() else []


def rollback_boot(root: Path) -> None:
    """GRUB fell back to the old slot: update_engine starts idle again on 3815.2.5."""
    set_state(root, Op.IDLE)


N = 10  # each check is a process and an HTTP exchange (about 0.35 s)


def test_no_update_loop_after_a_rollback(standin: Path, omaha: type[Omaha]) -> None:
    check_for_update(standin)
    assert installs(standin) == ["3975.2.0"]  # the update that will fail its gate
    # The failing boot's gate pins its version (what the gate hook calls), then GRUB falls back.
    assert updatehook.pin_failed_version("3975.2.0", "failed its first-boot gate on USR-B") is not None
    rollback_boot(standin)
    for _ in range(N):
        check_for_update(standin)
    assert installs(standin) == ["3975.2.0"]  # N checks, zero more installs of the failed version
    assert omaha.seen[-N:] == ["3975.2.0"] * N  # what it costs: the server sees the failed version
    omaha.latest = "3975.3.0"  # the server offers a different version: it comes through
    check_for_update(standin)
    assert installs(standin) == ["3975.2.0", "3975.3.0"]
    assert updatehook.pin_state()[0] == 1  # until that one passes its gate (the hook releases the pin)
    updatehook.release_pin("3975.3.0 passed its first-boot gate")
    assert updatehook.pin_state() == (0, None)


def test_without_the_pin_the_loop_is_there(standin: Path, omaha: type[Omaha]) -> None:
    """The control: the same checks without the pin (or after ``piccolod unpin``) install the failed
    version again at the first check after every rollback."""
    check_for_update(standin)
    for _ in range(3):
        rollback_boot(standin)
        for _ in range(3):
            check_for_update(standin)
    assert installs(standin) == ["3975.2.0"] * 4
    assert omaha.seen[-1] == "3815.2.5"


def test_the_pin_holds_with_no_agent_running(standin: Path, omaha: type[Omaha]) -> None:
    """update_engine reads the file at every check: nothing of the agent needs to run."""
    pin.pin("3975.2.0", "failed its first-boot gate", pin.conf_path())
    for _ in range(3):
        check_for_update(standin)
    assert installs(standin) == []
