"""piccolo_build.check with the real tools: systemd-analyze, bash, shellcheck, pkgcheck."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from piccolo_build import check
from piccolo_build.config import load_config
from piccolo_build.overlay import UNIT, OverlayFile, overlay_files
from piccolo_build.render import write_tree
from tests.builder_helpers import DEFAULT_CONFIG, GOLDEN
from tests.fixtures.daemons import Swtpm

CONFIGS = [DEFAULT_CONFIG, GOLDEN / "configs" / "arm64-proprietary.yaml"]


def edit(files: list[OverlayFile], name: str, old: str, new: str) -> list[OverlayFile]:
    out = []
    for f in files:
        if f.path.name == name:
            text = f.content.decode()
            assert old in text, f"{old!r} not in {f.path}"
            out.append(replace(f, content=text.replace(old, new).encode()))
        else:
            out.append(f)
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_rendered_overlay_passes_every_check(tmp_path: Path, config: Path) -> None:
    cfg = load_config(config)
    files = overlay_files(cfg)
    write_tree(files, tmp_path / "overlays")
    report = check.check_overlay(cfg, files, tmp_path / "overlays")
    assert [s.name for s in report.steps] == [
        "diff",
        "systemd-analyze verify",
        "bash -n",
        "shellcheck",
        "pkgcheck scan",
    ]
    assert report.ok, json.dumps(report.to_json(), indent=2)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_unit_security_exposure_at_most_2(tmp_path: Path, config: Path) -> None:
    cfg = load_config(config)
    check.unit_root(cfg, overlay_files(cfg), tmp_path)
    r = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--threshold=20",
            f"--root={tmp_path}",
            f"/usr/lib/systemd/system/{UNIT}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert match, r.stdout
    assert float(match.group(1)) <= 2.0


def test_diff_shows_a_unified_diff(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    files = overlay_files(cfg)
    out = tmp_path / "overlays"
    write_tree(files, out)
    unit = next(out.rglob(UNIT))
    unit.write_text(unit.read_text().replace("Type=notify", "Type=simple"))
    (out / "extra").write_text("x\n")
    text = check.diff_tree(files, out)
    assert "-Type=simple\n+Type=notify\n" in text
    assert "--- a/extra\n+++ /dev/null\n" in text
    assert not check.check_overlay(cfg, files, out).ok


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    files = edit(overlay_files(cfg), UNIT, "Type=notify", "Type=notfy")
    step = check.verify_units(cfg, files, tmp_path)
    assert not step.ok
    assert "notfy" in step.output


def test_verify_catches_an_unknown_key(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    files = edit(overlay_files(cfg), "10-piccolod-dependency.conf", "Requires=", "Requiers=")
    assert not check.verify_units(cfg, files, tmp_path).ok


def test_shell_checks_catch_bad_ebuilds(tmp_path: Path) -> None:
    files = overlay_files(load_config(DEFAULT_CONFIG))
    bad_syntax = edit(files, "piccolo-base-0.1.0.ebuild", "src_install() {", "src_install() {{")
    steps = {s.name: s for s in check.lint_shell(bad_syntax, tmp_path / "a")}
    assert not steps["bash -n"].ok
    unquoted = edit(
        files,
        "piccolo-base-0.1.0.ebuild",
        'newins "${FILESDIR}/10-piccolod-dependency.conf"',
        "newins ${FILESDIR}/10-piccolod-dependency.conf",
    )
    steps = {s.name: s for s in check.lint_shell(unquoted, tmp_path / "b")}
    assert steps["bash -n"].ok
    assert not steps["shellcheck"].ok
    assert "SC2086" in steps["shellcheck"].output


def test_shellcheck_catches_a_bashism_in_the_guard(tmp_path: Path) -> None:
    """The base image's scripts are POSIX sh: shellcheck --shell=sh sees a bashism."""
    files = edit(
        overlay_files(load_config(DEFAULT_CONFIG)), "piccolod-guard.sh", "set -u\n", "set -u\n[[ -n x ]]\n"
    )
    steps = {s.name: s for s in check.lint_shell(files, tmp_path)}
    assert not steps["shellcheck"].ok
    assert "SC3010" in steps["shellcheck"].output


def test_verify_installs_and_checks_the_guard_and_start_units(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    names = check.unit_root(cfg, overlay_files(cfg), tmp_path / "root")
    assert {Path(n).name for n in names} >= {"piccolod-guard.service", "piccolod-start.service"}
    assert (tmp_path / "root/usr/lib/piccolod/piccolod-guard").stat().st_mode & 0o111
    wants = tmp_path / "root/usr/lib/systemd/system/multi-user.target.wants/piccolod-start.service"
    assert wants.is_symlink()
    files = edit(overlay_files(cfg), "piccolod-guard.service", "Type=oneshot", "Type=oneshoot")
    step = check.verify_units(cfg, files, tmp_path / "bad")
    assert not step.ok and "oneshoot" in step.output


def test_pkgcheck_catches_a_broken_ebuild(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    files = edit(overlay_files(cfg), "piccolod-0.1.0.ebuild", 'SLOT="0"\n', "")
    step = check.scan(cfg, files, tmp_path)
    assert not step.ok
    assert "InvalidSlot" in step.output


def test_pkgcheck_catches_unstable_keywords_style(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    files = edit(
        overlay_files(cfg), "piccolo-base-0.1.0.ebuild", 'HOMEPAGE="https://piccolo.space/"', 'HOMEPAGE=""'
    )
    step = check.scan(cfg, files, tmp_path)
    assert not step.ok, step.output


def test_judge_pkgcheck_levels() -> None:
    lines = "\n".join(
        [
            json.dumps({"app-admin": {"piccolod": {"0.1.0": {"_style": {"BadDescription": "x"}}}}}),
            json.dumps({"dev-python": {"docker": {"1": {"_style": {"BadDescription": "x"}}}}}),
            json.dumps({"_warning": {"ArchesWithoutProfiles": "amd64"}}),
            json.dumps({"_info": {"Anything": "x"}}),
            json.dumps({"dev-python": {"docker": {"_error": {"Broken": "x"}}}}),
        ]
    )
    assert check.judge_pkgcheck(lines, ["app-admin/piccolod"]) == [
        "app-admin/piccolod/0.1.0: style BadDescription: x",
        "dev-python/docker: error Broken: x",
    ]


MDWE_PROBE = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
assert libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0, ctypes.get_errno()
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("write+execute memory was not refused")
except OSError:
    pass
import docker, prometheus_client, yaml
from tpm2_pytss import ESAPI, TCTILdr
name, _, conf = sys.argv[1].partition(":")
with ESAPI(TCTILdr(name, conf)) as esapi:
    _, _, values = esapi.pcr_read("sha256:0")
    assert len(bytes(values[0])) == 32
print("ok")
"""


def test_agent_libraries_run_with_memory_deny_write_execute(swtpm: Swtpm) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: the agent's TPM stack must work under the kernel's MDWE."""
    assert "\nMemoryDenyWriteExecute=yes\n" in next(
        f.content.decode() for f in overlay_files(load_config(DEFAULT_CONFIG)) if f.path.name == UNIT
    )
    r = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE, swtpm.tcti],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr
