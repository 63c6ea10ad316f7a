"""The files of ``monitoring/``: the alert rules and the dashboard, rendered from a configuration.

They are written like the overlay (:func:`piccolo_build.render.write_tree`: a temporary tree swapped in
whole, nothing touched when nothing changed, only a directory that holds a previous render replaced)
with their own marker file, and ``piccolo-build check`` compares the committed directory against a
fresh render (:func:`piccolo_build.check.diff_tree`).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from piccolo_build.gentoo import OverlayFile
from piccolo_build.monitoring import dashboard, rules
from piccolo_build.render import Marker

if TYPE_CHECKING:
    from piccolo_build.config import BuildConfig

RULES = PurePosixPath("piccolod-alerts.yaml")
DASHBOARD = PurePosixPath("piccolod-fleet.json")
MARKER = Marker(
    PurePosixPath(".piccolo-monitoring"),
    b"Rendered by piccolo-build monitoring: this whole directory is replaced on the next render;"
    b" do not edit.\n",
)


def monitoring_files(cfg: BuildConfig) -> list[OverlayFile]:
    """The rule file and the dashboard for ``cfg`` (raises :class:`dashboard.MissingSdk` without the SDK)."""
    mon = cfg.monitoring
    return [
        OverlayFile(RULES, rules.encode(rules.rule_file(mon))),
        OverlayFile(DASHBOARD, dashboard.encode(dashboard.build(mon))),
    ]
