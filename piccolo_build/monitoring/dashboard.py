"""The fleet dashboard, built with Grafana's own Python SDK (grafana-foundation-sdk) and written as the
dashboard JSON Grafana imports (``Dashboards > New > Import``, or file provisioning).

The panels answer what an operator of many machines asks: how many machines are up, healthy, degraded
or unhealthy; how many rolled an update back, and when; how the first-boot gates of the current boots
ended; which OS versions the fleet runs; which checks are slowest; which machines have an update pinned
or a check failing. Every query goes through ``monitoring.selector``; the data source is the
dashboard's ``datasource`` variable, so one file works with any Prometheus data source.

The SDK is imported inside :func:`build` (it is a builder-only dependency, in the ``check`` extra), and
the JSON is written deterministically: panel ids are assigned in order, keys are sorted, the layout is
the SDK's grid placement of a fixed sequence of panels. :func:`queries` lists every panel's expressions,
so a test can run each of them against a real Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from piccolo_build.monitoring.promql import series

if TYPE_CHECKING:
    from piccolo_build.config import Monitoring

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DESCRIPTION = (
    "The Piccolo OS fleet: health, rollbacks, first-boot gates, versions, checks (docs/monitoring.md)."
)
TAGS = ["piccolod", "piccolo-os"]


class MissingSdk(Exception):
    """grafana-foundation-sdk is not installed; ``str()`` says how to install it."""


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    kind: str  # stat, timeseries, table, bargauge
    title: str
    description: str
    targets: tuple[Target, ...]
    width: int
    height: int = 8
    unit: str = ""
    row: str = ""  # the row this panel opens (the first panel of a row names it)
    keep_values: str = ""  # a table: only rows whose Value is "above 0" or "0"
    stacked: bool = False  # a time series: stack the series (parts of one whole)
    bars: bool = False  # a time series: draw bars, one per ``interval``
    interval: str = ""  # the panel's minimum query interval ($__interval)


def stat(
    title: str, description: str, expr: str, *, legend: str = "", width: int = 4, row: str = ""
) -> Panel:
    """A number (or a few) for the top of the dashboard, from one instant query."""
    return Panel("stat", title, description, (Target(expr, legend, instant=True),), width, 4, row=row)


def table(title: str, description: str, expr: str, *, keep: str, unit: str = "", row: str = "") -> Panel:
    """A table of the machines (series) whose value is ``keep`` ("above 0" or "0")."""
    return Panel(
        "table", title, description, (Target(expr, instant=True),), 8, unit=unit, row=row, keep_values=keep
    )


def graph(title: str, description: str, expr: str, legend: str, **look: Any) -> Panel:
    """A time series of one range query, half the width; ``look``: ``stacked``, ``bars``, ``interval``."""
    return Panel("timeseries", title, description, (Target(expr, legend),), 12, **look)


def panels(mon: Monitoring) -> tuple[Panel, ...]:
    """The dashboard's panels, in layout order, as plain data (the SDK turns them into Grafana's)."""
    sel = mon.selector

    def m(name: str, *more: str) -> str:
        return series(name, sel, *more)

    def rate(name: str) -> str:
        return f"rate({m(name)}[$__rate_interval])"

    per_check = "sum by (instance, component)"
    mean_duration = (
        f"{per_check} ({rate('piccolod_health_check_duration_seconds_sum')})"
        f" / {per_check} ({rate('piccolod_health_check_duration_seconds_count')})"
    )
    return (
        stat(
            "Machines up",
            "piccolod targets Prometheus scrapes successfully.",
            f"count({m('up')} == 1) or vector(0)",
            row="Fleet",
        ),
        stat(
            "Machines by status",
            "Each machine counts once, under the status its agent reports now.",
            f"sum by (status) ({m('piccolod_health_status')})",
            legend="{{status}}",
            width=8,
        ),
        stat(
            "Gates pending",
            "Machines whose freshly updated slot waits for its first-boot gate.",
            f"sum({m('piccolod_gate_pending')}) or vector(0)",
        ),
        stat(
            "Rollbacks in 24 h",
            "Machines that came back from a failed update in the last 24 hours.",
            f"count({m('piccolod_last_rollback_timestamp_seconds')} > time() - 86400) or vector(0)",
        ),
        stat(
            "Pinned updates",
            "Machines that will not install a rolled-back version again until the pin is cleared.",
            f"sum({m('piccolod_update_pinned')}) or vector(0)",
        ),
        Panel(
            "timeseries",
            "Fleet health by status",
            "Machines per reported status, and machines whose agent cannot be scraped.",
            (
                Target(f"sum by (status) ({m('piccolod_health_status')})", "{{status}}"),
                Target(f"count({m('up')} == 0) or vector(0)", "down"),
            ),
            width=12,
            row="Health and updates",
            stacked=True,
        ),
        graph(
            "Rollbacks over time",
            "Rollbacks the machines came back from, per interval (the count lives in each machine's "
            "journal, so it survives the reboots a rollback is made of).",
            f"sum(increase({m('piccolod_rollbacks_total')}[$__interval]))",
            "rollbacks",
            bars=True,
            interval="1h",
        ),
        graph(
            "Gate outcomes of the current boots",
            "How the first-boot gate of each machine's current boot ended: passed and failed on a freshly "
            "updated slot, timeout when it ran out of time, skipped on a slot already marked good, warned "
            "when it let through required checks that failed before the update too.",
            f"sum by (outcome) ({m('piccolod_gate_outcomes_total')})",
            "{{outcome}}",
            stacked=True,
        ),
        graph(
            "Versions in the fleet",
            "Machines per OS version (a rollout moves machines from one line to the next).",
            f"count by (version) ({m('piccolod_os_info')})",
            "{{version}}",
            stacked=True,
        ),
        Panel(
            "bargauge",
            "Slowest checks",
            "The ten machine and check pairs with the longest mean check duration.",
            (Target(f"topk(10, {mean_duration})", "{{instance}} {{component}}", instant=True),),
            width=12,
            unit="s",
            row="Checks",
        ),
        Panel(
            "timeseries",
            "Check duration (p95) by component",
            "95th percentile of each check's duration over the fleet.",
            (
                Target(
                    "histogram_quantile(0.95, sum by (component, le) "
                    f"({rate('piccolod_health_check_duration_seconds_bucket')}))",
                    "{{component}}",
                ),
            ),
            width=12,
            unit="s",
        ),
        table(
            "Machines with a pinned update",
            "Machines whose updates are pinned after a rollback.",
            m("piccolod_update_pinned"),
            keep="above 0",
            row="Machines that need a look",
        ),
        table(
            "Failing checks",
            "Checks that count as failed now (after the policy's failure_threshold).",
            m("piccolod_health_check_status"),
            keep="0",
        ),
        table(
            "Gate failures by class",
            "Required checks failing in the first-boot gate of each machine's current boot, by class: "
            "regression (passed before the update), pre_existing (failed before it too), inconclusive (no "
            "baseline to compare with).",
            m("piccolod_gate_failure_class"),
            keep="above 0",
        ),
        table(
            "Last rollbacks",
            "When each machine's last rollback happened (the failed gate's time).",
            f"{m('piccolod_last_rollback_timestamp_seconds')} * 1000",
            keep="above 0",
            unit="dateTimeAsIso",
        ),
    )


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) for every query of a rendered dashboard, rows included."""
    for panel in dashboard.get("panels", []):
        for inner in (panel, *panel.get("panels", [])):
            for target in inner.get("targets", []) or []:
                yield inner["title"], target["expr"]


def _table_steps(keep: str) -> list[dict[str, Any]]:
    """Grafana transformations of a table: keep the rows whose Value is above 0 (or is 0), and hide the
    columns every row has the same (Time, the metric name, the job)."""
    matcher = {"id": "greater" if keep == "above 0" else "equal", "options": {"value": 0}}
    return [
        {
            "id": "filterByValue",
            "options": {
                "filters": [{"fieldName": "Value", "config": matcher}],
                "match": "any",
                "type": "include",
            },
        },
        {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "job": True}}},
    ]


def _sdk() -> SimpleNamespace:
    """The parts of grafana-foundation-sdk the dashboard is built with (imported here, on demand)."""
    try:
        from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, table, timeseries
        from grafana_foundation_sdk.builders.common import ReduceDataOptions, StackingConfig
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import common
        from grafana_foundation_sdk.models.dashboard import (
            DashboardCursorSync,
            DataSourceRef,
            DataTransformerConfig,
        )
        from grafana_foundation_sdk.models.prometheus import PromQueryFormat
    except ImportError as exc:
        raise MissingSdk(
            f"grafana-foundation-sdk is not installed ({exc}): pip install 'piccolo-build[check]'"
        ) from None
    return SimpleNamespace(
        bargauge=bargauge,
        dashboard=dashboard,
        prometheus=prometheus,
        stat=stat,
        table=table,
        timeseries=timeseries,
        ReduceDataOptions=ReduceDataOptions,
        StackingConfig=StackingConfig,
        JSONEncoder=JSONEncoder,
        common=common,
        DashboardCursorSync=DashboardCursorSync,
        DataSourceRef=DataSourceRef,
        DataTransformerConfig=DataTransformerConfig,
        PromQueryFormat=PromQueryFormat,
    )


def build(mon: Monitoring) -> dict[str, Any]:
    """The dashboard as the JSON data Grafana imports."""
    sdk = _sdk()
    source = sdk.DataSourceRef(type_val=DATASOURCE["type"], uid=DATASOURCE["uid"])
    board = (
        sdk.dashboard.Dashboard(mon.dashboard_title)
        .uid(mon.dashboard_uid)
        .description(DESCRIPTION)
        .tags(TAGS)
        .editable()
        .tooltip(sdk.DashboardCursorSync.CROSSHAIR)
        .refresh("1m")
        .time("now-24h", "now")
        .timezone("browser")
        .with_variable(sdk.dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    ids = iter(range(1, 1000))
    for p in panels(mon):
        if p.row:
            board = board.with_row(sdk.dashboard.Row(p.row).id(next(ids)))
        board = board.with_panel(_panel(sdk, p, source, next(ids)))
    data: dict[str, Any] = json.loads(sdk.JSONEncoder(sort_keys=True).encode(board.build()))
    return data


def _panel(sdk: SimpleNamespace, p: Panel, source: Any, panel_id: int) -> Any:
    """One panel's SDK builder."""
    kinds: dict[str, Any] = {
        "stat": lambda: (
            sdk.stat.Panel()
            .graph_mode(sdk.common.BigValueGraphMode.NONE)
            .reduce_options(sdk.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        ),
        "timeseries": lambda: sdk.timeseries.Panel().fill_opacity(10),
        "table": sdk.table.Panel,
        "bargauge": lambda: sdk.bargauge.Panel().orientation(sdk.common.VizOrientation.HORIZONTAL),
    }
    panel = kinds[p.kind]().id(panel_id).title(p.title).description(p.description).datasource(source)
    panel = panel.span(p.width).height(p.height)
    if p.unit:
        panel = panel.unit(p.unit)
    if p.stacked:
        panel = panel.stacking(sdk.StackingConfig().mode(sdk.common.StackingMode.NORMAL))
    if p.bars:
        panel = panel.draw_style(sdk.common.GraphDrawStyle.BARS)
    if p.interval:
        panel = panel.interval(p.interval)
    for step in _table_steps(p.keep_values) if p.keep_values else ():
        panel = panel.with_transformation(
            sdk.DataTransformerConfig(id_val=step["id"], options=step["options"])
        )
    for ref, t in zip("ABCDEFGH", p.targets, strict=False):
        query = sdk.prometheus.Dataquery().expr(t.expr).ref_id(ref).datasource(source)
        if t.legend:
            query = query.legend_format(t.legend)
        query = query.instant() if t.instant else query.range()
        if p.kind == "table":
            query = query.format(sdk.PromQueryFormat.TABLE)
        panel = panel.with_target(query)
    return panel


def encode(data: dict[str, Any]) -> bytes:
    """The dashboard JSON: sorted keys, two-space indent, one trailing newline."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
