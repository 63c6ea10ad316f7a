"""The scenario runner's lanes, without booting: scenarios that only record when they run, on machines whose
disk is a small file. How many run at once follows ``jobs`` (a number, or a file read before each start, as
the test suite's background run uses it), and the JSON report carries every outcome."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

from piccolo_build.commands.vm_test_cmd import _jobs
from piccolo_build.vm import models, report
from piccolo_build.vm.machine import Failed, Machine
from piccolo_build.vm.runner import run_scenarios
from piccolo_build.vm.scenarios import Notes, Scenario
from piccolo_build.vm.standin import Standin


class Lanes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.order: list[str] = []

    def scenario(self, name: str, minutes: float, seconds: float, fail: bool = False) -> Scenario:
        def run(_m: Machine, n: Notes) -> None:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
                self.order.append(name)
            time.sleep(seconds)
            with self.lock:
                self.now -= 1
            n["slept"] = float(seconds)
            if fail:
                raise Failed(f"{name} failed on purpose")

        return Scenario(name, name, run, minutes)


def _standin(tmp_path: Path) -> Standin:
    where = tmp_path / "standin"
    where.mkdir()
    (where / "disk.raw").write_bytes(b"\0" * 4096)
    return Standin(where, "test", False, 0.0)


def test_one_lane_runs_one_at_a_time_longest_first(tmp_path: Path) -> None:
    lanes = Lanes()
    scs = [lanes.scenario("short", 1, 0.2), lanes.scenario("long", 5, 0.2), lanes.scenario("mid", 2, 0.2)]
    outcomes = run_scenarios(_standin(tmp_path), scs, tmp_path / "out", "tcg", jobs=1, say=lambda _m: None)
    assert lanes.most == 1
    assert lanes.order == ["long", "mid", "short"]
    assert [o.name for o in outcomes] == ["short", "long", "mid"]  # reported in the order asked
    assert all(o.ok and o.notes == {"slept": "0s"} for o in outcomes)


def test_a_jobs_file_raised_mid_run_adds_a_lane(tmp_path: Path) -> None:
    lanes = Lanes()
    jobs_file = tmp_path / "jobs"
    jobs_file.write_text("1\n")
    scs = [lanes.scenario(f"s{i}", 6 - i, 0.6) for i in range(6)]
    timer = threading.Timer(0.9, lambda: jobs_file.write_text("2\n"))
    timer.start()
    t0 = time.monotonic()
    outcomes = run_scenarios(
        _standin(tmp_path), scs, tmp_path / "out", "tcg", jobs=_jobs(1, jobs_file), say=lambda _m: None
    )
    timer.join()
    assert all(o.ok for o in outcomes)
    assert lanes.most == 2
    assert time.monotonic() - t0 < 6 * 0.6  # not one at a time after the raise


def test_an_unreadable_jobs_file_means_the_default() -> None:
    missing = Path("/nonexistent/jobs")
    assert _jobs(3, None) == 3
    now = _jobs(2, missing)
    assert callable(now) and now() == 2


def test_a_bad_or_huge_number_in_the_jobs_file_is_bounded(tmp_path: Path) -> None:
    f = tmp_path / "jobs"
    now = _jobs(1, f)
    assert callable(now)
    for text, want in (("two", 1), ("0", 1), ("-4", 1), ("99", 8), (" 2 \n", 2)):
        f.write_text(text)
        assert now() == want, text


def test_failures_keep_their_logs_and_the_json_report_has_every_outcome(tmp_path: Path) -> None:
    lanes = Lanes()
    scs = [lanes.scenario("good", 1, 0.0), lanes.scenario("bad", 1, 0.0, fail=True)]
    outcomes = run_scenarios(_standin(tmp_path), scs, tmp_path / "out", "tcg", jobs=2, say=lambda _m: None)
    path = report.json_file(outcomes, tmp_path / "r" / "report.json")
    rows = {r["name"]: r for r in json.loads(path.read_text())}
    assert rows["good"]["ok"] is True and rows["good"]["logs"] is None
    assert rows["bad"]["ok"] is False and rows["bad"]["message"] == "bad failed on purpose"
    assert rows["bad"]["logs"] == str(tmp_path / "out" / "late" / "bad")
    assert rows["bad"]["model"] == "late"
    assert not (tmp_path / "out" / "late" / "good").exists()
    assert not list((tmp_path / "out" / "late" / "bad").glob("*.raw"))  # the disk copy goes, the logs stay


def test_both_models_run_in_one_pool_longest_first_and_report_model_by_model(tmp_path: Path) -> None:
    lanes = Lanes()
    late = _standin(tmp_path)
    initrd = dataclasses.replace(late, model=models.INITRD)
    scs = [lanes.scenario("short", 1, 0.1), lanes.scenario("long", 5, 0.1)]
    outcomes = run_scenarios([late, initrd], scs, tmp_path / "out", "tcg", jobs=1, say=lambda _m: None)
    assert lanes.order == ["long", "long", "short", "short"]  # both models' long one before any short one
    assert [(o.model, o.name) for o in outcomes] == [
        ("late", "short"), ("late", "long"), ("initrd", "short"), ("initrd", "long")
    ]  # fmt: skip
    assert [o.label for o in outcomes][-1] == "initrd/long"
