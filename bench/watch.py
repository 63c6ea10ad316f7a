"""Benchmark of the update watcher: the cost of one poll of update_engine, and what polling costs the agent.

Run: ``.venv/bin/python bench/watch.py [--polls 300] [--seconds 60]``.

update_engine is not on this machine: the client is a stand-in (``/bin/sh`` printing the five lines the
real ``update_engine_client -status`` prints, counting its runs), so a poll's figure is the agent's side
(start a process, read its output under a deadline, parse it) plus a shell's start; the real client, a
C++ program speaking D-Bus, costs more CPU in its own process and nothing more in the agent's. It prints:

1. one poll (:func:`piccolod.updates.engine.query`): wall time p50/p99 and the CPU of the child;
2. ``piccolod serve`` (storage and api checks every 60 s) for ``--seconds`` with update_engine idle
   (a poll every 10 s) and applying an update (every 1 s): polls made, the agent's CPU per minute
   (its own and its children's) and its resident memory at the start and at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from piccolod.updates import engine  # noqa: E402

CLIENT = """#!/bin/sh
echo x >> {count}
printf 'LAST_CHECKED_TIME=1796000000\\nPROGRESS=0.500000\\n'
printf 'CURRENT_OP={op}\\nNEW_VERSION=3975.2.0\\nNEW_SIZE=1\\n'
"""
TICKS = os.sysconf("SC_CLK_TCK")


def client(tmp: Path, op: str) -> tuple[Path, Path]:
    count = tmp / f"polls-{op}"
    path = tmp / f"client-{op}"
    path.write_text(CLIENT.format(count=count, op=op))
    path.chmod(0o755)
    return path, count


def bench_poll(tmp: Path, polls: int) -> None:
    path, _ = client(tmp, "UPDATE_STATUS_IDLE")
    env = {engine.CLIENT_ENV: str(path)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    walls = []
    for _ in range(polls):
        t0 = time.perf_counter()
        engine.query(env=env)
        walls.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / polls
    walls.sort()
    print(
        f"1. one poll ({polls} runs): wall p50 {statistics.median(walls) * 1000:.2f} ms, "
        f"p99 {walls[int(len(walls) * 0.99) - 1] * 1000:.2f} ms; child CPU {cpu * 1000:.2f} ms"
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICKS  # utime, stime, cutime, cstime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_serve(tmp: Path, op: str, seconds: float) -> None:
    path, count = client(tmp, op)
    sock = socketless_port()
    state = tmp / f"state-{op}"
    config = tmp / f"policy-{op}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "health_policy": {
                    "startup": {"required_components": ["storage", "api"], "optional_components": []},
                    "runtime": {"check_interval_seconds": 60},
                    "checks": {"storage": {"mounts": [str(tmp)]}},
                },
                "agent": {"listen": f"127.0.0.1:{sock}", "state_dir": str(state)},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update({engine.CLIENT_ENV: str(path), "PICCOLOD_UPDATE_CONF": str(tmp / f"update-{op}.conf")})
    proc = subprocess.Popen(
        [sys.executable, "-m", "piccolod", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    try:
        wait_up(sock, proc)
        time.sleep(2)
        rss0, cpu0 = rss_mib(proc.pid), cpu_seconds(proc.pid)
        polls0 = len(count.read_text().split()) if count.exists() else 0
        time.sleep(seconds)
        rss1, cpu1 = rss_mib(proc.pid), cpu_seconds(proc.pid)
        polls = len(count.read_text().split()) - polls0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    print(
        f"2. serve, update_engine {op.removeprefix('UPDATE_STATUS_')}, {seconds:g} s: {polls} polls, "
        f"CPU {(cpu1 - cpu0) / seconds * 60:.2f} s per minute, RSS {rss0:.1f} -> {rss1:.1f} MiB"
    )


def socketless_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"piccolod serve exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/livez")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("piccolod serve did not answer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="piccolod-watch-bench.") as tmp:
        bench_poll(Path(tmp), args.polls)
        for op in ("UPDATE_STATUS_IDLE", "UPDATE_STATUS_DOWNLOADING"):
            bench_serve(Path(tmp), op, args.seconds)


if __name__ == "__main__":
    main()
