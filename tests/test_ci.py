"""``piccolo-build ci init`` and ``ci key``: the workflow users adopt, and the cache key of a build.

The committed ``.github/workflows/piccolo.yml`` is this repository's own piccolo.yaml rendered (the
golden file, like overlays/); actionlint (with shellcheck on PATH, for every ``run:`` script) lints it
and the workflows of other configurations; the matrix follows one and several releases and boards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from piccolo_build.ci import key as ci_key
from piccolo_build.ci import workflow
from piccolo_build.config import load_config
from tests.builder_helpers import DEFAULT_CONFIG, ROOT, cli
from tests.fixtures.flatcar import NEWEST_STABLE, TAGS, FlatcarTrees

COMMITTED = ROOT / ".github" / "workflows" / "piccolo.yml"
BIN = Path(sys.executable).parent


def render(**overrides: str) -> str:
    return workflow.render(load_config(DEFAULT_CONFIG, overrides=overrides)).decode()


def jobs(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    return dict(doc["jobs"])


def actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    tool = BIN / "actionlint"
    assert tool.is_file(), f"{tool}: missing (the test extra installs actionlint)"
    assert (BIN / "shellcheck").is_file(), "shellcheck: missing (the check extra installs it)"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(
        [str(tool), "-no-color", str(path)], capture_output=True, text=True, env=env, check=False, timeout=120
    )


def test_the_committed_workflow_is_piccolo_yaml_rendered() -> None:
    assert COMMITTED.read_bytes() == workflow.render(load_config(DEFAULT_CONFIG))
    assert workflow.is_generated(COMMITTED)
    r = cli("ci", "init", "--check", "--config", DEFAULT_CONFIG, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


CONFIGS = {
    "one": {},
    "several": {"flatcar.releases": "[stable, beta, lts-4081.3.10]", "boards": "[amd64-usr, arm64-usr]"},
    "arm64 only": {"flatcar.releases": "[alpha, beta]", "boards": "[arm64-usr]"},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_actionlint_passes(tmp_path: Path, name: str) -> None:
    path = tmp_path / ".github" / "workflows" / "piccolo.yml"
    path.parent.mkdir(parents=True)
    path.write_text(render(**CONFIGS[name]))
    r = actionlint(path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_finds_what_is_wrong(tmp_path: Path) -> None:
    """The lint really lints: a misspelt matrix key and a broken shell script in a run: step fail."""
    path = tmp_path / "piccolo.yml"
    path.write_text(render().replace("${{ matrix.release }}", "${{ matrix.relase }}", 1))
    r = actionlint(path)
    assert r.returncode == 1 and "relase" in r.stdout
    path.write_text(
        render().replace('echo "release=${tag}"', 'echo "release=${tag}" >> $GITHUB_OUTPUT &&', 1)
    )
    r = actionlint(path)
    assert r.returncode == 1 and "shellcheck" in r.stdout


@pytest.mark.parametrize(
    ("overrides", "releases", "boards", "vm_boards"),
    [
        ({}, ["stable"], ["amd64-usr"], ["amd64-usr"]),
        ({"flatcar.release": "beta-4757.1.0"}, ["beta-4757.1.0"], ["amd64-usr"], ["amd64-usr"]),
        (CONFIGS["several"], ["stable", "beta", "lts-4081.3.10"], ["amd64-usr", "arm64-usr"], ["amd64-usr"]),
        (CONFIGS["arm64 only"], ["alpha", "beta"], ["arm64-usr"], None),
    ],
)
def test_the_matrix_follows_piccolo_yaml(
    overrides: dict[str, str], releases: list[str], boards: list[str], vm_boards: list[str] | None
) -> None:
    j = jobs(render(**overrides))
    build = j["build"]
    assert build["strategy"] == {"fail-fast": False, "matrix": {"release": releases, "board": boards}}
    assert build["env"] == {
        "PICCOLO_FLATCAR_RELEASE": "${{ matrix.release }}",
        "PICCOLO_BOARDS": "${{ matrix.board }}",
    }
    if vm_boards is None:
        assert "vm-test" not in j
        assert j["release"]["needs"] == ["build"]
    else:
        assert j["vm-test"]["strategy"]["matrix"] == {"release": releases, "board": vm_boards}
        assert j["vm-test"]["strategy"]["fail-fast"] is False
        assert j["release"]["needs"] == ["build", "vm-test"]


def _job_text(text: str, job: str) -> str:
    """The lines of one job in the rendered workflow."""
    lines = text.splitlines()
    start = lines.index(f"  {job}:")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i][:3].strip() and lines[i][2] != " "), len(lines)
    )
    return "\n".join(lines[start:end])


def test_secrets_only_in_the_release_job_on_tags() -> None:
    text = render(**CONFIGS["several"])
    j = jobs(text)
    assert j["release"]["if"] == "github.event_name == 'push' && startsWith(github.ref, 'refs/tags/v')"
    assert j["release"]["permissions"] == {"contents": "write"}
    for name in j:
        uses_secrets = "secrets." in _job_text(text, name)
        assert uses_secrets == (name == "release"), name
    assert yaml.safe_load(text)["permissions"] == {"contents": "read"}


def test_the_workflow_does_what_the_issue_asks() -> None:
    text = render()
    doc = yaml.safe_load(text)
    on = doc[True]  # YAML 1.1 reads the key "on" as true
    assert set(on) == {"push", "pull_request", "schedule", "workflow_dispatch"}
    assert doc["concurrency"]["cancel-in-progress"] == "${{ !startsWith(github.ref, 'refs/tags/') }}"
    steps = {s.get("name", s.get("uses")): s for s in doc["jobs"]["build"]["steps"]}
    assert steps["cache key"]["run"] == 'echo "key=$(piccolo-build ci key)" >> "$GITHUB_OUTPUT"'
    assert "piccolo-build-key: ${KEY}" in steps["a release built from the same inputs?"]["run"]
    setup = steps["disk and loop devices for the SDK"]["run"]
    assert '"data-root": "/mnt/docker"' in setup and "mknod" in setup and "modprobe loop" in setup
    assert steps["piccolo-build build"]["if"] == "steps.done.outputs.release == ''"
    uploads = [
        s for s in doc["jobs"]["build"]["steps"] if str(s.get("uses", "")).startswith("actions/upload")
    ]
    assert uploads[0]["with"]["retention-days"] == "${{ github.event_name == 'pull_request' && 3 || 30 }}"
    assert uploads[-1]["if"] == "failure()"
    vm = {s.get("name", s.get("uses")): s for s in doc["jobs"]["vm-test"]["steps"]}
    assert 'KERNEL=="kvm", GROUP="kvm", MODE="0666"' in vm["KVM"]["run"]
    assert "udevadm trigger" in vm["KVM"]["run"]
    assert "--junit vm-test/junit.xml" in vm["piccolo-build vm-test"]["run"]
    results = [
        s for s in doc["jobs"]["vm-test"]["steps"] if str(s.get("uses", "")).startswith("actions/upload")
    ]
    assert results[0]["if"].startswith("always()")
    release = {s.get("name", s.get("uses")): s for s in doc["jobs"]["release"]["steps"]}
    assert "piccolo-build release sign" in release["piccolo-build release sign and verify"]["run"]
    assert "piccolo-build release verify" in release["piccolo-build release sign and verify"]["run"]


def test_rendering_is_deterministic_and_init_writes_only_its_own_file(tmp_path: Path) -> None:
    assert render() == render()
    out = tmp_path / ".github" / "workflows" / "piccolo.yml"
    args = ("ci", "init", "--config", DEFAULT_CONFIG, "-o", out)
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and "written" in r.stdout, r.stderr
    assert out.read_text() == render()
    assert "unchanged" in cli(*args, cwd=tmp_path).stdout
    # Another configuration: --check shows the diff and fails; init rewrites.
    several = ("--set", "flatcar.releases=[stable, beta]")
    r = cli(*args, *several, "--check", cwd=tmp_path)
    assert r.returncode == 1 and '+        release: ["stable", "beta"]' in r.stdout
    assert cli(*args, *several, cwd=tmp_path).returncode == 0
    assert out.read_text() == render(**{"flatcar.releases": "[stable, beta]"})
    # A workflow the user wrote is never replaced.
    out.write_text("name: mine\n")
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and "was not written by `piccolo-build ci init`" in r.stderr
    assert out.read_text() == "name: mine\n"


def test_check_fails_when_the_workflow_drifts(tmp_path: Path) -> None:
    drifted = tmp_path / "piccolo.yml"
    drifted.write_text(render().replace("timeout-minutes: 360", "timeout-minutes: 60"))
    r = cli(
        "check", "--config", DEFAULT_CONFIG, "--overlay", ROOT / "overlays", "--workflow", drifted, "--json"
    )
    assert r.returncode == 1
    steps = {s["name"]: s for s in json.loads(r.stdout)["steps"]}
    step = steps[f"workflow {drifted}"]
    assert not step["ok"] and "-    timeout-minutes: 60" in step["output"]
    assert all(s["ok"] for name, s in steps.items() if name != f"workflow {drifted}")


def test_releases_in_the_configuration(tmp_path: Path) -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.flatcar.build_releases() == ("stable",)
    env = {"PICCOLO_FLATCAR_RELEASES": "[stable, beta]"}
    r = cli("config", "show", "--json", "--config", DEFAULT_CONFIG, cwd=tmp_path, env=env)
    assert json.loads(r.stdout)["flatcar"]["releases"] == ["stable", "beta"]
    for bad, message in (("[stable, stable]", "listed twice"), ("[gamma]", "not a valid Flatcar release")):
        r = cli("config", "show", "--set", f"flatcar.releases={bad}", cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr
    schema = json.loads(cli("config", "schema").stdout)
    assert schema["properties"]["flatcar"]["properties"]["releases"]["type"] == "array"


# --- the cache key -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream(flatcar: FlatcarTrees, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with the real tags whose channel can get a newer tag."""
    repo = tmp_path_factory.mktemp("upstream") / "scripts.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(flatcar.repo), str(repo)], check=True)
    return repo


def test_a_channel_resolves_to_its_newest_tag_and_commit(upstream: Path) -> None:
    newest = {
        "lts": "lts-4081.3.10",
        "stable": NEWEST_STABLE,
        "beta": "beta-4757.1.0",
        "alpha": "alpha-4790.0.0",
    }
    assert set(newest.values()) <= set(TAGS)
    for channel, tag in [*newest.items(), ("stable-4230.2.3", "stable-4230.2.3")]:
        resolved, commit = ci_key.resolve_release(channel, str(upstream))
        assert resolved == tag
        peeled = subprocess.run(
            ["git", "rev-parse", f"{tag}^{{commit}}"],
            cwd=upstream,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert commit == peeled
    with pytest.raises(Exception, match="names no tag"):
        ci_key.resolve_release("stable-1.2.3", str(upstream))


@pytest.mark.slow
def test_the_key_changes_with_every_input(tmp_path: Path, upstream: Path) -> None:
    def key(*sets: str, url: Path = upstream) -> str:
        args: list[str | Path] = ["ci", "key", "--config", DEFAULT_CONFIG, "--scripts-url", url]
        for s in sets:
            args += ["--set", s]
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    base = key()
    assert len(base) == 64 and key() == base
    variants = {
        key("flatcar.release=stable-4230.2.3"),
        key("boards=arm64-usr"),
        key("update.group=beta"),
        key("health_policy.runtime.failure_threshold=4"),  # the rendered overlay (vendor policy) too
    }
    assert base not in variants and len(variants) == 4
    # The lock in use is an input: a project's own lock changes the key.
    shutil.copy(ROOT / "piccolo_build" / "data" / "piccolo.lock.json", tmp_path / "piccolo.lock.json")
    assert key() == base  # the same content
    lock = json.loads((tmp_path / "piccolo.lock.json").read_text())
    lock["packages"][0]["size"] += 1
    (tmp_path / "piccolo.lock.json").write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    assert key() != base
    (tmp_path / "piccolo.lock.json").unlink()
    # A new tag on the channel moves the key of a channel build, not of a pinned one.
    pinned = key("flatcar.release=stable-4593.2.5")
    subprocess.run(["git", "tag", "stable-4593.3.0", "stable-4593.2.5"], cwd=upstream, check=True)
    try:
        assert key() != base
        assert key("flatcar.release=stable-4593.2.5") == pinned
    finally:
        subprocess.run(["git", "tag", "-d", "stable-4593.3.0"], cwd=upstream, check=True, capture_output=True)
    r = cli("ci", "key", "--scripts-url", tmp_path / "nowhere", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: git ls-remote")
