"""Command modules of ``piccolo-build``; each exposes ``register(app)``."""

from __future__ import annotations

from types import ModuleType

from piccolo_build.commands import (
    build_cmd,
    bundle_cmd,
    ci_cmd,
    config_cmd,
    monitoring_cmd,
    release_cmd,
    render_cmd,
    stage_cmd,
    vm_test_cmd,
)

COMMAND_MODULES: tuple[ModuleType, ...] = (
    config_cmd,
    render_cmd,
    monitoring_cmd,
    stage_cmd,
    build_cmd,
    bundle_cmd,
    release_cmd,
    ci_cmd,
    vm_test_cmd,
)
