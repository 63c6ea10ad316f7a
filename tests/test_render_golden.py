"""Golden trees: the rendered overlay for each configuration, byte for byte and mode for mode.

Regenerate after an intended change with ``PICCOLO_UPDATE_GOLDEN=1 pytest tests/test_render_golden.py``
and review the diff. ``default`` is the committed ``piccolo.yaml``; the others live in
``tests/golden/configs/``.
"""

from __future__ import annotations

import os

import pytest

from piccolo_build.check import diff_tree
from piccolo_build.config import load_config
from piccolo_build.overlay import overlay_files
from piccolo_build.render import write_tree
from tests.builder_helpers import DEFAULT_CONFIG, GOLDEN, ROOT

CONFIGS = {"default": DEFAULT_CONFIG} | {p.stem: p for p in sorted((GOLDEN / "configs").glob("*.yaml"))}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_golden_tree(name: str) -> None:
    files = overlay_files(load_config(CONFIGS[name]))
    tree = GOLDEN / name
    if os.environ.get("PICCOLO_UPDATE_GOLDEN") == "1":
        write_tree(files, tree)
    assert diff_tree(files, tree) == ""


def test_there_is_a_second_config_covering_arm64_pin_and_licence() -> None:
    cfg = load_config(CONFIGS["arm64-proprietary"])
    assert [b.value for b in cfg.boards] == ["arm64-usr"]
    assert cfg.flatcar.release.startswith("stable-")
    assert not cfg.package.license_is_free
    assert (GOLDEN / "arm64-proprietary" / "licenses" / cfg.package.license).is_file()


def test_committed_overlay_is_the_default_render() -> None:
    assert diff_tree(overlay_files(load_config(DEFAULT_CONFIG)), ROOT / "overlays") == ""
