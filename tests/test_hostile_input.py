"""One contract for every bad input of the configuration readers, held under fuzzing.

The readers: piccolo.yaml (``load_config``), a policy file (``load_policy(FILE)``), the vendor policy
overridden by an administrator's (``load_policy(vendor=, admin=)``), the dependency lock
(``load_lock``), and flag and environment values (``load_config(env=, overrides=)``). Whatever they are
given, they return a model or raise the documented error (ModelError; PiccoloError for the lock) whose
message is one line of printable characters, within 2 s of CPU and 200 MB. The cases that once hung or
crashed the real programs are regression tests against the real processes, measured with ``wait4``.
Inputs are seeded: a failure names the seed and the input, and reproduces.
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piccolo_build.config import load_config
from piccolo_build.errors import PiccoloError
from piccolo_build.lock import SHIPPED_LOCK, load_lock
from piccolod.commands.serve import load_default_policy
from piccolod.model import ModelError
from piccolod.policy import PolicyFile, load_policy
from tests import hostile
from tests.builder_helpers import DEFAULT_CONFIG, ROOT
from tests.builder_helpers import cli as run_builder

VENDOR_TEXT = (
    ROOT / "overlays" / "coreos-overlay" / "app-admin" / "piccolod" / "files" / "health-policy.yaml"
).read_text()
SEED = 20_260_101
MUTATED_INPUTS = 1500


def _one_line(message: str) -> None:
    assert message, "an empty error message"
    assert message.isprintable(), f"unprintable characters in {message!r}"


@pytest.fixture
def vendor(tmp_path: Path) -> Path:
    path = tmp_path / "vendor.yaml"
    path.write_text(VENDOR_TEXT)
    return path


def readers(vendor: Path) -> dict[str, Callable[[Path], object]]:
    return {
        "piccolo.yaml": load_config,
        "policy": load_policy,
        "vendor+admin": lambda path: load_policy(vendor=vendor, admin=path),
        "lock": load_lock,
    }


def hold_the_contract(read: Callable[[Path], object], path: Path, what: str) -> float:
    """Read ``path``; the outcome is a model or the documented one-line error. Returns CPU seconds."""
    start = time.process_time()
    try:
        read(path)
    except ModelError as exc:
        _one_line(str(exc))
    except PiccoloError as exc:  # the lock's documented error, a ModelError's line inside
        _one_line(exc.message)
    except Exception as exc:
        pytest.fail(f"{what}: {type(exc).__name__}: {exc!r}")
    took = time.process_time() - start
    assert took < hostile.LIMIT_SECONDS, f"{what}: {took:.2f} s of CPU"
    return took


# --- the real programs on the cases that once hung, exploded or crashed them --------------------------

PROGRAMS = {
    "piccolo-build config validate": (hostile.validate, 2),
    "piccolod check --config": (hostile.check, 3),
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("case", sorted(hostile.CASES))
def test_the_real_programs_answer_in_one_line_within_bounds(tmp_path: Path, case: str, program: str) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(hostile.CASES[case])
    argv, code = PROGRAMS[program]
    m = hostile.measure(argv(path))
    assert (m.returncode, m.stdout) == (code, ""), m.stderr[-2000:]
    lines = m.stderr.splitlines()
    if code == 2:
        assert len(lines) == 2 and lines[1].startswith("hint: "), m.stderr[-2000:]
        assert lines[0].startswith(f"error: {path}"), lines[0]
    else:
        assert len(lines) == 1 and lines[0].startswith(f"piccolod: {path}"), m.stderr[-2000:]
    assert all(line.isprintable() for line in lines)
    assert m.cpu_seconds < hostile.LIMIT_SECONDS, f"{m.cpu_seconds:.2f} s of CPU"
    assert m.peak_rss_bytes < hostile.LIMIT_BYTES, f"{m.peak_rss_bytes / 2**20:.0f} MiB"


def test_the_alias_bomb_is_small_and_refused_at_its_first_anchor(tmp_path: Path) -> None:
    assert len(hostile.CASES["alias-bomb"]) < 320
    path = tmp_path / "bomb.yaml"
    path.write_bytes(hostile.CASES["alias-bomb"])
    m = hostile.measure(hostile.check(path))
    assert m.stderr == f"piccolod: {path}:1: a: anchors (&a) are not allowed\n"


def test_a_fifo_as_configuration_is_refused_at_once(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    m = hostile.measure(hostile.check(fifo), timeout=20)
    assert (m.returncode, m.stderr) == (3, f"piccolod: {fifo}: cannot read: not a regular file\n")


@pytest.mark.parametrize("case", sorted(hostile.CASES))
def test_the_agent_falls_back_to_the_vendor_policy(vendor: Path, tmp_path: Path, case: str) -> None:
    """An administrator's file with any of these must never keep the agent from starting."""
    admin = tmp_path / "admin.yaml"
    admin.write_bytes(hostile.CASES[case])
    policy, error = load_default_policy(vendor=vendor, admin=admin)
    assert policy == load_policy(vendor)
    assert error is not None and error.startswith(str(admin)), error
    _one_line(error)


@pytest.mark.parametrize(
    ("env", "flag", "key"),
    [
        ({"PICCOLO_BOARDS": "[&a amd64-usr, *a]"}, None, "boards"),
        ({}, "boards=[!!python/name:os.system x]", "boards"),
        (
            {},
            "health_policy.runtime.failure_threshold=" + "9" * 5000,
            "health_policy.runtime.failure_threshold",
        ),
        ({"PICCOLO_HEALTH_POLICY_STARTUP_TIMEOUT_SECONDS": "!!float fast"}, None, "health_policy"),
        ({"PICCOLO_UPDATE_GROUP": "beta\x1b[2J"}, None, "update.group"),
        ({}, "version=" + "1." * 25_000 + "0", "version"),
        ({}, "\x1b[31mno.such=1", "\\x1b[31mno.such"),
    ],
)
def test_hostile_flags_and_environment(env: dict[str, str], flag: str | None, key: str) -> None:
    r = run_builder("config", "show", *(["--set", flag] if flag else []), env=env)
    assert (r.returncode, r.stdout) == (2, ""), r.stderr[-2000:]
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and all(line.isprintable() for line in lines), r.stderr[-2000:]
    origin = f"environment ${next(iter(env))}" if env else "command line"
    assert lines[0].startswith(f"error: {origin}: {key}"), lines[0]


# --- fuzzing ------------------------------------------------------------------------------------------

TOKENS = [
    "&a ", "*a", "!!bool ", "!!int ", "!!float ", "!!str ", "!!python/object:os.system ", "!x ",
    "<<: ", "[", "]", "{", "}", ": ", "- ", "\n", "\t", "? ", "---\n", "...\n", "%TAG !e! tag:x,2000:\n",
    "'", '"', "#", "|\n", ">\n", "9" * 50, "9" * 5000, "\x1b[31m", "\u202e", "\\n", "~", ".nan", "1e999",
    "0x" + "f" * 60, "\x00", "\ufeff", "\r\n", "é", "\U0001f600", ",", "&b [*b]", "null", "yes",
]  # fmt: skip


def mutate(rng: random.Random, text: str) -> bytes:
    data = bytearray(text.encode())
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(6)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[at:at] = rng.choice(TOKENS).encode()
        elif kind == 2:
            del data[at : at + rng.randint(1, 40)]
        else:
            lines = bytes(data).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if kind == 3:
                lines.insert(i, lines[j])
            elif kind == 4:
                lines[i] = b"  " * rng.randint(0, 3) + lines[i].lstrip(b" ")
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def test_mutated_files_hold_the_contract(tmp_path: Path, vendor: Path) -> None:
    """Thousands of seeded mutations of the real files (piccolo.yaml, the vendor policy, the lock)."""
    rng = random.Random(SEED)
    sources = [DEFAULT_CONFIG.read_text(), VENDOR_TEXT, SHIPPED_LOCK.read_text()]
    path = tmp_path / "input.yaml"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes: dict[str, int] = {}
    for n in range(MUTATED_INPUTS):
        data = mutate(rng, sources[n % len(sources)])
        path.write_bytes(data)
        for name, read in readers(vendor).items():
            hold_the_contract(read, path, f"seed {SEED}, input {n} ({name}): {data!r}")
        outcomes[sources[n % len(sources)][:10]] = outcomes.get(sources[n % len(sources)][:10], 0) + 1
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) * 1024
    assert grown < hostile.LIMIT_BYTES, f"peak memory grew by {grown / 2**20:.0f} MiB"
    assert sum(outcomes.values()) == MUTATED_INPUTS


YAMLISH = st.lists(
    st.one_of(
        st.sampled_from(TOKENS), st.sampled_from(["health_policy", "agent", "listen", "startup", "a", "1"])
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(YAMLISH, st.text(max_size=200)))
def test_random_yaml_holds_the_contract(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    vendor = base / "vendor.yaml"
    vendor.write_text(VENDOR_TEXT)
    path = base / "input.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    for name, read in readers(vendor).items():
        hold_the_contract(read, path, f"{name}: {text!r}")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.sampled_from(
        ["boards", "version", "health_policy.runtime.failure_threshold", "agent.listen", "no.such"]
    ),
    st.one_of(YAMLISH, st.text(max_size=100)),
)
def test_random_flags_and_environment_hold_the_contract(key: str, value: str) -> None:
    env_name = "PICCOLO_" + key.upper().replace(".", "_")
    for kwargs in ({"overrides": {key: value}}, {"env": {env_name: value}}):
        args: dict[str, Any] = kwargs
        start = time.process_time()
        try:
            load_config(None, **args)
        except ModelError as exc:
            _one_line(str(exc))
        assert time.process_time() - start < hostile.LIMIT_SECONDS


def test_a_valid_file_still_loads() -> None:
    """The guard against a contract held by refusing everything."""
    assert load_config(DEFAULT_CONFIG).version
    assert isinstance(
        load_policy(
            Path(hostile.__file__).parent.parent
            / "overlays"
            / "coreos-overlay"
            / "app-admin"
            / "piccolod"
            / "files"
            / "health-policy.yaml"
        ),
        PolicyFile,
    )
    assert load_lock(SHIPPED_LOCK).packages


# --- the builder's other inputs: files of the flatcar/scripts checkout, its own build state -----------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"SDK=\xff\xfe\n", "{path}:1: not UTF-8 text"),
        (None, "{path}: cannot read: not a regular file"),  # a FIFO: refused, never waited on
        (b"", "{path}: larger than 16384 KiB"),  # a sparse 17 MiB file
    ],
    ids=["binary", "fifo", "huge"],
)
def test_checkout_files_are_read_bounded(tmp_path: Path, content: bytes | None, message: str) -> None:
    import os

    from piccolo_build.errors import read_text

    path = tmp_path / "build_image_util.sh"
    if content is None:
        os.mkfifo(path)
    elif not content:
        with path.open("wb") as f:
            f.truncate(17 * 1024 * 1024)
    else:
        path.write_bytes(content)
    with pytest.raises(PiccoloError) as exc:
        read_text(path)
    assert exc.value.message == message.format(path=path)


def test_a_binary_version_file_is_one_line(tmp_path: Path) -> None:
    from piccolo_build.versionfile import read_sdk_version

    path = tmp_path / "version.txt"
    path.write_bytes(b"FLATCAR_SDK_VERSION=\xff\n")
    with pytest.raises(PiccoloError, match=r"version\.txt: not UTF-8 text$"):
        read_sdk_version(path)


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"steps": [1, 2]}',
        b'{"steps": {"checkout": "done", "sdk": {"digest": 1}}}',
        b"null",
        b'{"steps": {"ok": {"digest": "abc", "result": null}}}',
    ],
    ids=["binary", "deep", "list", "bad-entries", "null", "good"],
)
def test_a_damaged_build_state_means_the_steps_run_again(tmp_path: Path, content: bytes) -> None:
    from piccolo_build.sdk import State

    path = tmp_path / "state.json"
    path.write_bytes(content)
    state = State(path)
    assert state.steps == ({"ok": {"digest": "abc", "result": None}} if b'"ok"' in content else {})


# --- drop-in directories: every hostile file as a check, and hostile directories ------------------------


@pytest.mark.parametrize("case", sorted(hostile.CASES))
def test_a_hostile_drop_in_is_one_line_within_bounds(tmp_path: Path, case: str) -> None:
    policy = tmp_path / "health-policy.yaml"
    policy.write_text("health_policy:\n  startup: {required_components: [web], optional_components: []}\n")
    dropin = tmp_path / "checks.d" / "web.yaml"
    dropin.parent.mkdir()
    dropin.write_bytes(hostile.CASES[case])
    m = hostile.measure(hostile.check(policy))
    assert (m.returncode, m.stdout) == (3, ""), m.stderr[-2000:]
    lines = m.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"piccolod: {dropin}"), m.stderr[-2000:]
    assert lines[0].isprintable()
    assert m.cpu_seconds < hostile.LIMIT_SECONDS, f"{m.cpu_seconds:.2f} s of CPU"
    assert m.peak_rss_bytes < hostile.LIMIT_BYTES, f"{m.peak_rss_bytes / 2**20:.0f} MiB"


def _hostile_directory(root: Path, attack: str) -> str:
    """Lay ``attack`` out under ``root``; the words its one-line error must hold."""
    import os

    required = root / "required.d"
    if attack == "symlink-loop":
        (root / "checks.d").symlink_to(root / "checks.d")
        return "checks.d: cannot read the directory: Too many levels of symbolic links"
    if attack == "fifo-entry":
        required.mkdir()
        os.mkfifo(required / "10-fifo")
        return "10-fifo is not a regular file"
    if attack == "many-entries":
        required.mkdir()
        for i in range(20_000):
            (required / f"s{i}").touch()
        return "required.d: more than 256 entries"
    if attack == "control-characters-in-a-name":
        required.mkdir()
        (required / "a\nb\x1b[31m").touch(mode=0o755)
        return "cannot name a check: must not contain control characters"
    if attack == "undecodable-name":
        required.mkdir()
        os.close(os.open(os.fsencode(required) + b"/\xff\xfe", os.O_CREAT | os.O_WRONLY, 0o755))
        return "cannot name a check"
    if attack == "dangling-symlink":
        required.mkdir()
        (required / "gone").symlink_to(root / "nowhere")
        return "no such file or directory"
    raise AssertionError(attack)


@pytest.mark.parametrize(
    "attack",
    ["symlink-loop", "fifo-entry", "many-entries", "control-characters-in-a-name", "undecodable-name",
     "dangling-symlink"],
)  # fmt: skip
def test_hostile_directories_are_one_line_within_bounds(tmp_path: Path, attack: str) -> None:
    policy = tmp_path / "health-policy.yaml"
    policy.write_text("health_policy:\n  startup: {required_components: [], optional_components: []}\n")
    words = _hostile_directory(tmp_path, attack)
    m = hostile.measure(hostile.check(policy), timeout=30)
    assert (m.returncode, m.stdout) == (3, ""), m.stderr[-2000:]
    lines = m.stderr.splitlines()
    assert len(lines) == 1 and lines[0].isprintable() and words in lines[0], m.stderr[-2000:]
    assert m.cpu_seconds < hostile.LIMIT_SECONDS and m.peak_rss_bytes < hostile.LIMIT_BYTES


def test_a_hostile_admin_drop_in_falls_back_to_the_vendor_layer(tmp_path: Path) -> None:
    """An administrator's broken drop-in must never keep the agent from starting (nor blame the vendor)."""
    vendor = tmp_path / "usr" / "health-policy.yaml"
    admin = tmp_path / "etc" / "health-policy.yaml"
    vendor.parent.mkdir()
    vendor.write_text(VENDOR_TEXT)
    (admin.parent / "checks.d").mkdir(parents=True)
    (admin.parent / "checks.d" / "web.yaml").write_bytes(hostile.CASES["alias-bomb"])
    policy, error = load_default_policy(vendor=vendor, admin=admin)
    assert policy == load_policy(vendor)
    assert error is not None and error.startswith(str(admin.parent / "checks.d" / "web.yaml")), error


CHECK_TEXT = """\
kind: http
url: 'http://127.0.0.1:8080/ready'
status: 200
json: {field: checks.db, equals: up}
timeout_seconds: 2
interval_seconds: 10
run_on: [gate, runtime]
"""


def test_mutated_drop_ins_hold_the_contract(tmp_path: Path) -> None:
    """Seeded mutations of a check drop-in, and of a greenboot directory's names."""
    rng = random.Random(SEED + 16)
    policy = tmp_path / "health-policy.yaml"
    policy.write_text("health_policy:\n  startup: {required_components: [web], optional_components: []}\n")
    dropin = tmp_path / "checks.d" / "web.yaml"
    dropin.parent.mkdir()
    loaded = 0
    for n in range(400):
        data = mutate(rng, CHECK_TEXT)
        dropin.write_bytes(data)
        start = time.process_time()
        try:
            load_policy(policy)
            loaded += 1
        except ModelError as exc:
            _one_line(str(exc))
        except Exception as exc:
            pytest.fail(f"seed {SEED + 16}, input {n}: {type(exc).__name__}: {exc!r} for {data!r}")
        assert time.process_time() - start < hostile.LIMIT_SECONDS
    assert 0 < loaded < 400  # some mutations still make a valid check, most do not
