"""``/metrics``: parsed with prometheus_client's own text parser, series present at zero from the start."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from piccolod import updatehook
from piccolod.metrics import GateOutcome, Metrics
from piccolod.osinfo import OsInfo
from piccolod.policy import Component
from piccolod.result import Status
from piccolod.slot import BootSlot, SlotRow, SlotState
from piccolod.updates import pin
from tests.agent_helpers import Switch, get, policy_data, running_daemon, wait_for
from tests.fixtures.gptdisk import USR_A, USR_B


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[name, tuple(sorted(labels.items()))]


def test_every_series_exists_at_zero_before_any_event() -> None:
    text = Metrics().render().decode()
    got = samples(text)
    for comp in Component:
        assert value(text, "piccolod_health_check_status", component=comp) == 0
        assert value(text, "piccolod_health_check_duration_seconds_count", component=comp) == 0
        assert value(text, "piccolod_health_check_duration_seconds_bucket", component=comp, le="+Inf") == 0
    for st in Status:
        assert value(text, "piccolod_assessments_total", status=st) == 0
    for outcome in GateOutcome:
        assert value(text, "piccolod_gate_outcomes_total", outcome=outcome) == 0
    assert value(text, "piccolod_rollbacks_total") == 0
    assert {name for name, _ in got} >= {"piccolod_health_status", "piccolod_build_info"}


def test_only_checked_components_get_series() -> None:
    text = Metrics([Component.TPM, Component.API]).render().decode()
    got = {labels for name, labels in samples(text) if name == "piccolod_health_check_status"}
    assert got == {(("component", "tpm"),), (("component", "api"),)}
    counts = {
        labels
        for name, labels in samples(text)
        if name
        in ("piccolod_health_check_duration_seconds_count", "piccolod_health_check_consecutive_failures")
    }
    assert counts == got


def test_registries_are_isolated() -> None:
    a, b = Metrics(), Metrics()
    a.rollback_tally(1, 1.7e9)
    assert value(a.render().decode(), "piccolod_rollbacks_total") == 1
    assert value(b.render().decode(), "piccolod_rollbacks_total") == 0


def test_metrics_over_http_follow_the_assessments() -> None:
    checks = {c: Switch() for c in Component}
    checks[Component.NETWORK].healthy = False
    data = policy_data(["tpm", "storage", "api"], ["network"], interval=0.05, threshold=2)
    data["health_policy"]["startup"]["optional_all_failed"] = "degraded"  # the one optional one fails
    with running_daemon(checks, data) as (daemon, port):
        # The fifth call has started only once the fourth assessment was published.
        wait_for(lambda: checks[Component.TPM].calls >= 5, what="four published assessments")
        daemon.metrics.rollback_tally(1, 1.7e9)
        status, headers, body = get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assessments = sum(value(text, "piccolod_assessments_total", status=st) for st in Status)
    assert assessments >= 4
    # network was never healthy, so hysteresis gives it no credit: every assessment is degraded.
    assert value(text, "piccolod_assessments_total", status="degraded") == assessments
    assert value(text, "piccolod_assessments_total", status="unhealthy") == 0
    assert value(text, "piccolod_health_check_status", component="tpm") == 1
    assert value(text, "piccolod_health_check_status", component="network") == 0
    # docker is not checked: no series at all, so a `== 0` alert cannot fire for it forever.
    for comp in ("docker", "containers"):
        assert ("piccolod_health_check_status", (("component", comp),)) not in samples(text)
    assert value(text, "piccolod_health_check_consecutive_failures", component="network") >= 2
    assert value(text, "piccolod_health_check_duration_seconds_count", component="tpm") >= 4
    assert ("piccolod_health_check_duration_seconds_count", (("component", "docker"),)) not in samples(text)
    assert value(text, "piccolod_health_status", status="degraded") == 1
    assert value(text, "piccolod_health_status", status="healthy") == 0
    assert value(text, "piccolod_gate_outcomes_total", outcome="skipped") == 1
    assert value(text, "piccolod_gate_outcomes_total", outcome="passed") == 0
    assert value(text, "piccolod_rollbacks_total") == 1
    assert value(text, "piccolod_last_assessment_timestamp_seconds") > 1.7e9


def test_one_blip_does_not_flip_the_status_gauge() -> None:
    checks = {c: Switch() for c in Component}
    data = policy_data(["tpm", "storage", "api"], interval=3600, threshold=3)
    with running_daemon(checks, data) as (daemon, port):
        checks[Component.TPM].healthy = False
        daemon.assess()
        daemon.assess()
        text = get(port, "/metrics")[2].decode()
        assert value(text, "piccolod_health_check_status", component="tpm") == 1
        assert value(text, "piccolod_health_check_consecutive_failures", component="tpm") == 2
        assert get(port, "/api/v1/system/health")[0] == 200
        daemon.assess()
        text = get(port, "/metrics")[2].decode()
        assert value(text, "piccolod_health_check_status", component="tpm") == 0
        assert value(text, "piccolod_assessments_total", status="unhealthy") == 1
        assert get(port, "/api/v1/system/health")[0] == 503


def test_histogram_buckets_are_cumulative_with_count_and_sum() -> None:
    m = Metrics([Component.TPM])
    for seconds in (0.001, 0.02, 0.02, 0.7, 99.0):
        m.duration.observe(seconds, Component.TPM)
    text = m.render().decode()
    bucket = "piccolod_health_check_duration_seconds_bucket"
    assert value(text, bucket, component="tpm", le="0.005") == 1
    assert value(text, bucket, component="tpm", le="0.025") == 3
    assert value(text, bucket, component="tpm", le="1.0") == 4
    assert value(text, bucket, component="tpm", le="60.0") == 4
    assert value(text, bucket, component="tpm", le="+Inf") == 5
    assert value(text, "piccolod_health_check_duration_seconds_count", component="tpm") == 5
    assert value(text, "piccolod_health_check_duration_seconds_sum", component="tpm") == 99.741


def test_help_type_and_escaping_as_the_format_requires() -> None:
    m = Metrics([Component.TPM])
    m.status.set(1, 'we"ird\\lab\nel')
    m.status.help = "two\nlines \\ here"
    text = m.render().decode()
    assert "# HELP piccolod_health_status two\\nlines \\\\ here\n" in text
    assert 'piccolod_health_status{status="we\\"ird\\\\lab\\nel"} 1.0\n' in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["piccolod_health_status"].documentation == "two\nlines \\ here"
    assert families["piccolod_health_status"].type == "gauge"
    assert families["piccolod_health_check_duration_seconds"].type == "histogram"
    assert families["piccolod_assessments"].type == "counter"  # the parser strips _total
    assert value(text, "piccolod_health_status", status='we"ird\\lab\nel') == 1
    for line in text.splitlines():  # one sample or comment per line, nothing else
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or line.startswith("piccolod_")


def test_a_scrape_reuses_the_rendered_text_until_something_changes() -> None:
    m = Metrics()
    first = m.render()
    assert m.render() is first
    m.rollback_tally(1, 1.7e9)
    second = m.render()
    assert second is not first and value(second.decode(), "piccolod_rollbacks_total") == 1
    m.gate_outcome(GateOutcome.PASSED)
    assert value(m.render().decode(), "piccolod_gate_outcomes_total", outcome="passed") == 1


def test_numbers_as_prometheus_reads_them() -> None:
    from piccolod.metrics import number

    assert [number(v) for v in (0, 1, 0.25, 1e20, float("inf"), float("-inf"))] == [
        "0.0", "1.0", "0.25", "1e+20", "+Inf", "-Inf",
    ]  # fmt: skip
    assert number(float("nan")) == "NaN"


# --- what a fleet needs (docs/monitoring.md) ----------------------------------------------------------


def _rows(successful_b: bool) -> BootSlot:
    rows = (
        SlotRow("USR-A", 3, USR_A, priority=1, tries=0, successful=True, booted=False),
        SlotRow("USR-B", 4, USR_B, priority=2, tries=0, successful=successful_b, booted=True),
    )
    return BootSlot(
        USR_B, "/dev/vda", "USR-B", SlotState.MARKED if successful_b else SlotState.UNMARKED, rows
    )


def test_fleet_series_exist_from_the_start_and_facts_only_once_read() -> None:
    text = Metrics([Component.TPM, Component.API], interval=15).render().decode()
    for name in (
        "piccolod_gate_pending",
        "piccolod_gate_deadline_timestamp_seconds",
        "piccolod_last_rollback_timestamp_seconds",
        "piccolod_update_pinned",
        "piccolod_rollbacks_total",
    ):
        assert value(text, name) == 0, name
    assert value(text, "piccolod_assessment_interval_seconds") == 15
    enabled = {
        dict(labels)["component"]: v
        for (n, labels), v in samples(text).items()
        if n == "piccolod_check_enabled"
    }
    assert enabled == {"docker": 0, "containers": 0, "tpm": 1, "storage": 0, "network": 0, "api": 1}
    info = {labels: v for (n, labels), v in samples(text).items() if n == "piccolod_os_info"}
    assert info == {
        (("board", "unknown"), ("group", "unknown"), ("slot", "unknown"), ("version", "unknown")): 1
    }
    # The slot table is a fact nobody has read yet: no series rather than a 0 that says "not marked".
    assert not [n for n, _ in samples(text) if n.startswith("piccolod_slot_")]


def test_os_info_and_the_slot_table_once_read() -> None:
    m = Metrics([Component.TPM])
    m.machine(os=OsInfo(version="4593.2.5", board="amd64-usr", group="stable"))
    m.machine(slot=_rows(successful_b=False))
    text = m.render().decode()
    info = [labels for (n, labels), v in samples(text).items() if n == "piccolod_os_info" and v == 1]
    assert info == [(("board", "amd64-usr"), ("group", "stable"), ("slot", "USR-B"), ("version", "4593.2.5"))]
    assert value(text, "piccolod_slot_successful", slot="USR-A") == 1
    assert value(text, "piccolod_slot_successful", slot="USR-B") == 0
    assert value(text, "piccolod_slot_priority", slot="USR-B") == 2
    assert value(text, "piccolod_slot_tries", slot="USR-A") == 0
    m.machine(slot=_rows(successful_b=True))  # update-engine marked it; a refresh reads it
    text = m.render().decode()
    assert value(text, "piccolod_slot_successful", slot="USR-B") == 1
    assert len([n for n, _ in samples(text) if n == "piccolod_os_info"]) == 1  # one info series, always
    m.machine(slot=BootSlot(None, None, None, SlotState.UNKNOWN, error="disk gone"))
    text = m.render().decode()
    assert not [n for n, _ in samples(text) if n.startswith("piccolod_slot_")]
    assert (
        "piccolod_os_info",
        (("board", "amd64-usr"), ("group", "stable"), ("slot", "unknown"), ("version", "4593.2.5")),
    ) in samples(text)


def test_gate_pending_then_its_verdict() -> None:
    m = Metrics()
    m.gate_begins(1_796_000_120.5)
    text = m.render().decode()
    assert value(text, "piccolod_gate_pending") == 1
    assert value(text, "piccolod_gate_deadline_timestamp_seconds") == 1_796_000_120.5
    m.gate_outcome(GateOutcome.PASSED)
    text = m.render().decode()
    assert value(text, "piccolod_gate_pending") == 0
    assert value(text, "piccolod_gate_deadline_timestamp_seconds") == 1_796_000_120.5


def test_the_rollback_tally_and_the_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``piccolod_update_pinned`` reads the real pin: the file update_engine reads."""
    conf = tmp_path / "update.conf"
    monkeypatch.setenv(pin.UPDATE_CONF_ENV, str(conf))
    m = Metrics()
    m.rollback_tally(2, 1_796_000_000.25)
    m.update_pinned(updatehook.pin_state()[0])
    text = m.render().decode()
    assert value(text, "piccolod_rollbacks_total") == 2
    assert value(text, "piccolod_last_rollback_timestamp_seconds") == 1_796_000_000.25
    assert value(text, "piccolod_update_pinned") == 0
    pin.pin("3975.2.0", "failed its gate")
    m.update_pinned(updatehook.pin_state()[0])
    assert value(m.render().decode(), "piccolod_update_pinned") == 1
    conf.write_text(conf.read_text() + "FLATCAR_RELEASE_VERSION=3975.2.1\n")  # overridden: not effective
    m.update_pinned(updatehook.pin_state()[0])
    assert value(m.render().decode(), "piccolod_update_pinned") == 0
