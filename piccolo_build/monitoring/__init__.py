"""The fleet view: Prometheus alert rules and a Grafana dashboard for piccolod, rendered from piccolo.yaml.

``piccolo-build monitoring`` writes them into ``monitoring/`` (committed; ``piccolo-build check`` fails
when a fresh render differs), the way a monitoring mixin would, without jsonnet: :mod:`.promql` knows
PromQL's small grammar we write (durations, label selectors), :mod:`.rules` holds the alert table and
serialises the rule file, :mod:`.dashboard` builds the dashboard with Grafana's own SDK, and
:mod:`.render` joins them into the files of the output directory (docs/monitoring.md).
"""
