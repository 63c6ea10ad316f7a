"""``piccolod gate [--dry-run]`` and ``piccolod status [--json]`` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from piccolod import journal
from piccolod import record as rec
from piccolod.gate import NO_REBOOT_UNKNOWN_SLOT, ROLLBACK_DISABLED
from piccolod.journal import Journal, Store
from piccolod.record import read_boot_id
from tests.agent_helpers import FREE_SPACE_FLOOR
from tests.fixtures.gptdisk import (
    USR_A,
    USR_B,
    cmdline_for,
    corrupt,
    gptprio_next,
    install_update,
    usr_device,
)
from tests.test_journal import record as sample_record

PICCOLOD = [sys.executable, "-m", "piccolod"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def setup(tmp_path: Path, disk: Path, *, update: bool, tpm: bool = False, automatic: bool = True) -> Path:
    """A policy for the image ``disk``; with ``update`` the harness boots a fresh update (USR-B)."""
    if update:
        install_update(disk, USR_A)
    booted = gptprio_next(disk)
    (tmp_path / "cmdline").write_text(cmdline_for(booted))
    script = tmp_path / "reboot"
    script.write_text(f"#!/bin/sh\necho requested >> {tmp_path}/reboots\n")
    script.chmod(0o755)
    fake = tmp_path / "bin" / "systemctl"  # systemctl start update-engine, recorded
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/systemctl\n')
    fake.chmod(0o755)
    (tmp_path / "run").mkdir(exist_ok=True)
    required = "[storage, api, tpm]" if tpm else "[storage, api]"
    auto = "true" if automatic else "false"
    config = tmp_path / "policy.yaml"
    config.write_text(
        f"""\
health_policy:
  startup: {{timeout_seconds: 1, required_components: {required}, optional_components: []}}
  rollback: {{reboot_grace_seconds: 0, reboot_command: ["{script}"], enable_automatic: {auto}}}
  thresholds: {{tpm_operation_timeout_seconds: 0.5, min_disk_space_percent: {FREE_SPACE_FLOOR}}}
  checks: {{storage: {{mounts: ["{tmp_path}"]}}, tpm: {{tcti: "swtpm:path={tmp_path}/no-tpm"}}}}
agent:
  listen: "127.0.0.1:{_port()}"
  state_dir: "{tmp_path}/state"
  boot: {{cmdline: "{tmp_path}/cmdline", usr_device: "{usr_device(disk, partuuid=booted)}"}}
"""
    )
    return config


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``piccolod ARGS`` with the fake systemctl and the runtime directory of the config's directory."""
    base = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    config = Path(args[args.index("--config") + 1]) if "--config" in args else None
    if config is not None:
        base["PATH"] = f"{config.parent / 'bin'}:{base['PATH']}"
        base["RUNTIME_DIRECTORY"] = str(config.parent / "run")
    return subprocess.run(
        [*PICCOLOD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=False,
    )


def test_dry_run_on_a_healthy_update(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=True)
    r = run("gate", "--dry-run", "--config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "* USR-B" in r.stdout and "unmarked" in r.stdout
    assert "decision: ready: required components passed" in r.stdout
    assert "would: write the pass token and send READY=1 now" in r.stdout
    assert not (tmp_path / "state" / journal.JOURNAL_NAME).exists()
    assert not (tmp_path / "run" / "gate-passed").exists() and not (tmp_path / "systemctl").exists()


def test_dry_run_on_a_failing_update_acts_on_nothing(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=True, tpm=True)
    r = run("gate", "--dry-run", "--config", str(config))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "would: fail the gate (critical_component_failure)" in r.stdout
    assert "then reboot into the previous slot" in r.stdout
    assert "FAIL tpm" in r.stdout
    assert not (tmp_path / "reboots").exists()
    assert not (tmp_path / "state" / journal.JOURNAL_NAME).exists()


def test_dry_run_on_a_marked_slot(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=False, tpm=True)
    r = run("gate", "--dry-run", "--config", str(config))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "* USR-A" in r.stdout and "would: write the pass token and send READY=1 at once" in r.stdout


def test_dry_run_beside_a_running_serve(tmp_path: Path, flatcar_disk: Path) -> None:
    """The agent holds the listen address: the dry run must not crash binding it; the running agent
    answers its api check instead."""
    config = setup(tmp_path, flatcar_disk, update=True)
    listen = next(ln for ln in config.read_text().splitlines() if "listen:" in ln).split('"')[1]
    port = int(listen.rsplit(":", 1)[1])
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "INVOCATION_ID")}
    serve_state = tmp_path / "serve"
    serve_config = tmp_path / "serve.yaml"  # same address, its own state dir and a marked slot
    (tmp_path / "serve-cmdline").write_text(cmdline_for(USR_A))
    serve_config.write_text(
        config.read_text()
        .replace(f"{tmp_path}/state", str(serve_state))
        .replace(f"{tmp_path}/cmdline", f"{tmp_path}/serve-cmdline")
        .replace(usr_device(flatcar_disk, partuuid=USR_B), usr_device(flatcar_disk, partuuid=USR_A))
    )
    daemon = subprocess.Popen(
        [*PICCOLOD, "serve", "--config", str(serve_config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve never listened"
                assert daemon.poll() is None, "serve exited"
                time.sleep(0.05)
        r = run("gate", "--dry-run", "--config", str(config))
    finally:
        daemon.terminate()
        daemon.wait(10)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stdout + r.stderr
    assert "API not started here" in r.stderr and "the api check asks the running agent" in r.stderr
    assert "ok   api" in r.stdout, r.stdout
    assert "decision: ready: required components passed" in r.stdout


def gate_notified(tmp_path: Path, config: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``piccolod gate`` with a real NOTIFY_SOCKET; what it exited with and every datagram it sent."""
    sock_path = tmp_path / "notify.sock"
    sock_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        r = run("gate", "--config", str(config), env={"NOTIFY_SOCKET": str(sock_path)})
        sock.setblocking(False)
        sent = []
        while True:
            try:
                sent.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    return r, sent


def test_failed_gate_records_reboots_once_and_status_shows_it(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=True, tpm=True)
    r, sent = gate_notified(tmp_path, config)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "gate failed: critical_component_failure" in r.stderr
    assert any("EXTEND_TIMEOUT_USEC=" in s for s in sent)
    assert any(s.startswith("READY=1\nSTATUS=gate failed (critical_component_failure)") for s in sent), sent
    assert not (tmp_path / "run" / "gate-passed").exists() and not (tmp_path / "systemctl").exists()
    assert (tmp_path / "reboots").read_text() == "requested\n"
    again = run("gate", "--config", str(config))  # same boot: the verdict stands, no second reboot
    assert again.returncode == 3 and "already failed in this boot" in again.stderr
    assert (tmp_path / "reboots").read_text() == "requested\n"

    status = run("status", "--json", "--config", str(config))
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["booted"] == {
        "slot": "USR-B",
        "partuuid": USR_B,
        "disk": str(flatcar_disk),
        "state": "unmarked",
    }
    assert [(s["name"], s["priority"], s["tries"], s["successful"]) for s in doc["slots"]] == [
        ("USR-A", 1, 0, True),
        ("USR-B", 2, 0, False),
    ]
    assert doc["last_gate"]["verdict"] == "failed" and doc["last_gate"]["reboot_requested"]
    assert doc["rollback_record"]["condition"] == "critical_component_failure"
    assert doc["update_status"] is None  # still on the failed slot, in the same boot
    # The failed version is pinned; status shows it, unpin clears it.
    assert doc["update_pin"]["version"] == rec.os_version() and doc["update_pin"]["effective"]
    text = run("status", "--config", str(config)).stdout
    assert f"update pin: {rec.os_version()} in {os.environ['PICCOLOD_UPDATE_CONF']}:" in text
    assert "piccolod unpin clears it" in text and "baseline: none" in text
    assert run("unpin").returncode == 0
    assert "update pin: none" in run("status", "--config", str(config)).stdout
    conf = Path(os.environ["PICCOLOD_UPDATE_CONF"])
    conf.write_bytes(b"FLATCAR_RELEASE_VERSION=\xff\n")  # an update.conf the agent will not touch
    bad = run("status", "--config", str(config))
    assert bad.returncode == 3 and "USR-B" in bad.stdout and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines() == [f"piccolod: {conf}: not UTF-8 (byte 24)"], bad.stderr


def test_status_after_the_fallback_boot(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=False)  # booted USR-A, marked
    record = sample_record(
        boot_id="an-earlier-boot",
        condition="startup_timeout",
        reason="no assessment finished within 120s",
        components=(),
    )
    Store(tmp_path / "state").put(Journal(rollback=record))
    r = run("status", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert "* USR-A" in r.stdout
    assert "update status: rolled_back: USR-B rolled back: startup_timeout" in r.stdout
    assert "last rollback record: USR-B" in r.stdout and "last gate: none recorded" in r.stdout
    assert "rollbacks: none" in r.stdout  # status reads; the agent's fallback boot counts
    Store(tmp_path / "state").count_rollback(record)
    r = run("status", "--config", str(config))
    assert f"rollbacks: 1, the last one failed its gate at {rec.when(record.failed_at)}" in r.stdout
    doc = json.loads(run("status", "--json", "--config", str(config)).stdout)
    assert doc["rollbacks"] == {"count": 1, "last_at": record.failed_at, "last_boot_id": "an-earlier-boot"}


@pytest.mark.parametrize("command", ["gate", "status"])
def test_bad_input_is_one_line(tmp_path: Path, flatcar_disk: Path, command: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  boot:\n    usr_device: relative/path\n")
    r = run(command, "--config", str(bad))
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and "bad.yaml:3: agent.boot.usr_device" in r.stderr


def test_status_with_a_corrupt_record(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=False)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / journal.JOURNAL_NAME).write_text("{half")
    r = run("status", "--config", str(config))
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0 and "journal.json: not JSON" in r.stderr


def test_rollback_disabled_by_policy_fails_the_unit_loudly(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=True, tpm=True, automatic=False)
    r, sent = gate_notified(tmp_path, config)
    assert r.returncode == 3, r.stdout + r.stderr
    assert not (tmp_path / "run" / "gate-passed").exists()
    assert any(s == f"STATUS=gate failed (critical_component_failure): {ROLLBACK_DISABLED}" for s in sent), (
        sent
    )
    assert ROLLBACK_DISABLED in r.stderr.splitlines()[-1]  # serve prints this as its last word
    loud = [json.loads(ln) for ln in r.stderr.splitlines() if ln.startswith("{") and ROLLBACK_DISABLED in ln]
    assert [d["level"] for d in loud] == ["critical"], r.stderr
    assert not (tmp_path / "reboots").exists()
    record = journal.read(tmp_path / "state").rollback
    assert record is not None and record.reboot_requested is False
    again, sent = gate_notified(tmp_path, config)  # Upholds=/a manual restart in the same boot says it again
    assert again.returncode == 3 and ROLLBACK_DISABLED in again.stderr
    assert any(ROLLBACK_DISABLED in s and s.startswith("STATUS=") for s in sent)
    assert not (tmp_path / "reboots").exists()


def test_gate_reads_the_backup_gpt_when_the_primary_is_corrupt(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=True, tpm=True)  # booted USR-B, unmarked, TPM down
    corrupt(flatcar_disk, "primary-header")
    r = run("gate", "--config", str(config))
    assert r.returncode == 3, r.stdout + r.stderr
    assert (tmp_path / "reboots").read_text() == "requested\n"  # the backup says unmarked: roll back
    assert "primary unusable: GPT header CRC32 mismatch" in r.stderr
    status = run("status", "--config", str(config))
    assert "* USR-B" in status.stdout and "gpt: backup header at LBA 98303" in status.stdout, status.stdout
    doc = json.loads(run("status", "--json", "--config", str(config)).stdout)
    assert doc["gpt"]["header"] == "backup" and "CRC32" in doc["gpt"]["primary_error"]
    assert doc["booted"]["state"] == "unmarked"


def test_marked_slot_with_a_corrupt_primary_gpt_is_never_blocked(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=False, tpm=True)  # booted USR-A, marked, TPM down
    corrupt(flatcar_disk, "primary-entries")
    r, sent = gate_notified(tmp_path, config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(s.startswith("READY=1") for s in sent)
    assert not any("EXTEND_TIMEOUT_USEC" in s for s in sent)
    assert (tmp_path / "run" / "gate-passed").read_text().strip() == read_boot_id()
    assert not (tmp_path / "systemctl").exists()  # a marked slot: update-engine is not the agent's to start


def test_both_gpt_copies_corrupt_fails_closed_without_a_reboot(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=True, tpm=True)
    corrupt(flatcar_disk, "primary-header")
    corrupt(flatcar_disk, "backup-header")
    r, sent = gate_notified(tmp_path, config)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no valid GPT: primary: GPT header CRC32 mismatch" in r.stderr
    assert not (tmp_path / "run" / "gate-passed").exists()
    assert any(NO_REBOOT_UNKNOWN_SLOT in s for s in sent) and NO_REBOOT_UNKNOWN_SLOT in r.stderr
    assert not (tmp_path / "reboots").exists()  # a reboot might land on the same slot: none
    status = run("status", "--config", str(config))
    assert status.returncode == 0 and "error:" in status.stdout and "no valid GPT" in status.stdout


def test_both_gpt_copies_corrupt_but_healthy_opens_the_gate(tmp_path: Path, flatcar_disk: Path) -> None:
    config = setup(tmp_path, flatcar_disk, update=True)
    corrupt(flatcar_disk, "primary-entries")
    corrupt(flatcar_disk, "backup-entries")
    r, sent = gate_notified(tmp_path, config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(s.startswith("READY=1") for s in sent)
    assert (tmp_path / "run" / "gate-passed").read_text().strip() == read_boot_id()
    assert (tmp_path / "systemctl").read_text() == "start --no-block update-engine.service\n"
