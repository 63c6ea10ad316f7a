"""``/metrics``: parsed with prometheus_client's own text parser, series present at zero from the start."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from piccolod.metrics import GateOutcome, Metrics
from piccolod.policy import Component
from piccolod.result import Status
from tests.agent_helpers import Switch, get, policy_data, running_daemon, wait_for


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
    a.rollback()
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
        daemon.metrics.rollback()
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
    m.rollback()
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
