"""Shared fixtures live in tests/fixtures/*; each module is a pytest plugin listed here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.daemons",  # real dockerd and swtpm
    "tests.fixtures.gptdisk",  # GPT disk images made with sgdisk
    "tests.fixtures.nspawn",  # real systemd as PID 1 in systemd-nspawn
    "tests.fixtures.bootrig",  # Flatcar's boot order: staged base image files and a real sysext
    "tests.fixtures.flatcar",  # the real flatcar/scripts trees, cloned once per session
    "tests.fixtures.fakesdk",  # a checkout of a real tree with recording stand-ins for the SDK
    "tests.fixtures.vmrun",  # the VM scenarios, run in the background for the whole session
]


# The fixtures that boot something, and the marker a test using one must carry: the fast tier
# (`python3 build.py test --fast`) leaves those markers out, so an unmarked boot would slip into it.
BOOTING_FIXTURES = {"machine": "boot", "vm_outcomes": "vm"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        f"{item.nodeid} uses the {fixture!r} fixture but is not marked {marker!r}"
        for item in items
        for fixture, marker in BOOTING_FIXTURES.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None
    ]
    if unmarked:
        raise pytest.UsageError("; ".join(unmarked))


@pytest.fixture(autouse=True)
def _a_pin_file_per_test(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's agent pins into an update.conf of its own (a pin one test leaves behind must not
    show in the next one's metrics)."""
    conf = tmp_path_factory.mktemp("etc-flatcar") / "update.conf"
    monkeypatch.setenv("PICCOLOD_UPDATE_CONF", str(conf))


@pytest.fixture(scope="session", autouse=True)
def _agent_stays_off_the_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every agent a test starts writes its pass token into a directory of the session, not into the
    host's /run/piccolod, and its ``systemctl start update-engine.service`` goes to a stand-in that
    records the call (``systemctl.log`` beside it). Its update-loop pin goes into a file of the session,
    never the host's /etc/flatcar/update.conf, and it finds no update_engine_client unless a test
    gives it a stand-in."""
    root = tmp_path_factory.mktemp("agent-host")
    (root / "run").mkdir()
    fake = root / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$*" >> {root}/systemctl.log\n')
    fake.chmod(0o755)
    saved = {
        k: os.environ.get(k)
        for k in ("RUNTIME_DIRECTORY", "PATH", "PICCOLOD_UPDATE_CONF", "PICCOLOD_UPDATE_ENGINE_CLIENT")
    }
    os.environ["RUNTIME_DIRECTORY"] = str(root / "run")
    os.environ["PICCOLOD_UPDATE_CONF"] = str(root / "etc-flatcar" / "update.conf")
    os.environ["PICCOLOD_UPDATE_ENGINE_CLIENT"] = str(root / "no-update-engine-client")
    os.environ["PATH"] = f"{fake.parent}:{os.environ.get('PATH', '')}"
    try:
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
