"""Usage errors of both command lines: a typo gives one error line and the usage, never a traceback.

``piccolo-build``: exit 2, ``error: ...`` and ``hint: usage: ...`` on stderr, nothing on stdout, for
every command the app has (walked from the app itself, so a new command is covered without editing
this file) and every kind of mistake: unknown option, unknown command, missing argument, missing
option value, a value given to a flag, a bad value, an extra argument. ``piccolod``: the same shape with
exit 3, the monitoring convention's "unknown". Most cases run in process through the real entry
functions (``piccolo_build.cli.run``, ``piccolod.cli.main``); a few run as real processes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from piccolo_build import cli
from piccolod import cli as agent_cli
from tests.builder_helpers import DEFAULT_CONFIG
from tests.builder_helpers import cli as run_builder


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def _tree() -> list[tuple[tuple[str, ...], Any]]:
    cli._register()
    return list(_commands(typer.main.get_command(cli.app)))


TREE = _tree()
LEAVES = [(path, cmd) for path, cmd in TREE if not hasattr(cmd, "commands")]
GROUPS = [(path, cmd) for path, cmd in TREE if hasattr(cmd, "commands")]


def _ids(items: list[tuple[tuple[str, ...], Any]]) -> list[str]:
    return [" ".join(path) or "piccolo-build" for path, _ in items]


def _arguments(cmd: Any) -> list[str]:
    """Valid values for a command's required positional arguments."""
    return [str(DEFAULT_CONFIG) for p in cmd.params if p.param_type_name == "argument" and p.required]


def _options(cmd: Any, *, flags: bool) -> list[str]:
    return [
        max(p.opts, key=len)
        for p in cmd.params
        if p.param_type_name == "option" and bool(getattr(p, "is_flag", False)) == flags
    ]


def usage_error(capsys: pytest.CaptureFixture[str], path: tuple[str, ...], argv: list[str]) -> str:
    """Run ``piccolo-build argv`` in process; assert the usage-error contract for command ``path``."""
    code = cli.run(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), err
    command = " ".join(("piccolo-build", *path))
    assert lines[1].startswith(f"hint: usage: {command} "), err
    assert lines[1].endswith(f"; see `{command} --help`"), err
    assert all(line.isprintable() for line in lines), err
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize(("path", "cmd"), TREE, ids=_ids(TREE))
def test_unknown_option(capsys: pytest.CaptureFixture[str], path: tuple[str, ...], cmd: Any) -> None:
    message = usage_error(capsys, path, [*path, "--no-such-option"])
    assert message.startswith("No such option: --no-such-option"), message


@pytest.mark.parametrize(("path", "cmd"), GROUPS, ids=_ids(GROUPS))
def test_unknown_command(capsys: pytest.CaptureFixture[str], path: tuple[str, ...], cmd: Any) -> None:
    assert usage_error(capsys, path, [*path, "stag"]).startswith("No such command 'stag'")


@pytest.mark.parametrize(("path", "cmd"), GROUPS, ids=_ids(GROUPS))
def test_a_group_without_its_command_prints_help_and_exits_2(
    capsys: pytest.CaptureFixture[str], path: tuple[str, ...], cmd: Any
) -> None:
    assert cli.run(list(path)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"Usage: {' '.join(('piccolo-build', *path))} [OPTIONS] COMMAND")
    assert "Commands:" in err


# Commands added later are covered too; these only pick the cases that apply to each command.
PLAIN = [(path, cmd) for path, cmd in LEAVES if not _arguments(cmd)]
VALUED = [(path, cmd) for path, cmd in LEAVES if _options(cmd, flags=False)]
FLAGGED = [(path, cmd) for path, cmd in LEAVES if any(f.startswith("--") for f in _options(cmd, flags=True))]
CONFIGURED = [(path, cmd) for path, cmd in LEAVES if "--config" in _options(cmd, flags=False)]


def test_the_app_has_the_commands_these_tests_walk() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"config show", "config validate", "config schema", "render", "check", "plan", "build"} <= names
    assert {"render", "check", "plan", "build", "bundle", "config show"} <= {
        " ".join(p) for p, _ in CONFIGURED
    }
    assert len(VALUED) >= 6 and len(FLAGGED) >= 6


@pytest.mark.parametrize(("path", "cmd"), PLAIN, ids=_ids(PLAIN))
def test_extra_argument(capsys: pytest.CaptureFixture[str], path: tuple[str, ...], cmd: Any) -> None:
    message = usage_error(capsys, path, [*path, "extra-argument"])
    assert message.startswith("Got unexpected extra argument"), message


def test_extra_argument_after_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    path = ("config", "validate")
    message = usage_error(capsys, path, [*path, str(DEFAULT_CONFIG), "extra-argument"])
    assert message.startswith("Got unexpected extra argument"), message


@pytest.mark.parametrize(("path", "cmd"), VALUED, ids=_ids(VALUED))
def test_missing_option_values(capsys: pytest.CaptureFixture[str], path: tuple[str, ...], cmd: Any) -> None:
    for option in _options(cmd, flags=False):
        message = usage_error(capsys, path, [*path, *_arguments(cmd), option])
        assert message == f"Option '{option}' requires an argument.", message


@pytest.mark.parametrize(("path", "cmd"), FLAGGED, ids=_ids(FLAGGED))
def test_a_value_for_a_flag(capsys: pytest.CaptureFixture[str], path: tuple[str, ...], cmd: Any) -> None:
    for flag in [f for f in _options(cmd, flags=True) if f.startswith("--")]:
        message = usage_error(capsys, path, [*path, *_arguments(cmd), f"{flag}=yes"])
        assert message == f"Option '{flag}' does not take a value.", message


@pytest.mark.parametrize(("path", "cmd"), CONFIGURED, ids=_ids(CONFIGURED))
def test_bad_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, path: tuple[str, ...], cmd: Any
) -> None:
    """A directory where a file is wanted: every command that reads a configuration."""
    message = usage_error(capsys, path, [*path, "--config", str(tmp_path)])
    assert message == f"Invalid value for '--config' / '-c': file '{tmp_path}' is a directory."


@pytest.mark.parametrize(
    ("path", "args", "words"),
    [
        (("config", "validate"), ["{tmp}"], "Invalid value for 'FILE'"),
        (("build",), ["--work-dir", str(DEFAULT_CONFIG)], "Invalid value for '--work-dir' / '-w'"),
    ],
)
def test_more_bad_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, path: tuple[str, ...], args: list[str], words: str
) -> None:
    argv = [*path, *(a.format(tmp=tmp_path) for a in args)]
    assert usage_error(capsys, path, argv).startswith(words)


def test_missing_argument(capsys: pytest.CaptureFixture[str]) -> None:
    required = [path for path, cmd in LEAVES if _arguments(cmd)]
    assert ("config", "validate") in required
    for path in required:
        assert usage_error(capsys, path, list(path)).startswith("Missing argument '"), path
    assert usage_error(capsys, ("config", "validate"), ["config", "validate"]) == "Missing argument 'FILE'."


def test_control_characters_in_a_typo_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    message = usage_error(capsys, (), ["--\x1b[31mred\nline"])
    assert message.startswith("No such option: --\\x1b[31mred\\"), message


class _Vendored(Exception):
    """Shaped like click's ClickException, defined nowhere near click or typer."""

    exit_code = 4

    def format_message(self) -> str:
        return "something the framework refused"


def test_framework_errors_are_recognised_by_shape_not_by_module() -> None:
    assert cli.framework_error(_Vendored(), ["render"]) == (
        "something the framework refused",
        "usage: piccolo-build render [OPTIONS]; see `piccolo-build render --help`",
        4,
    )
    assert cli.framework_error(ValueError("a bug")) is None
    assert cli.framework_error(typer.Exit(3)) is None  # an exit, not an error (handled before)


# --- real processes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "error", "usage"),
    [
        (["check", "--no-such-option", "x"], "No such option: --no-such-option", "piccolo-build check"),
        (["stag"], "No such command 'stag'. Did you mean 'stage'?", "piccolo-build"),
        (["xyzzy"], "No such command 'xyzzy'.", "piccolo-build"),
        (["config", "validate"], "Missing argument 'FILE'.", "piccolo-build config validate"),
        (["render", "-o"], "Option '-o' requires an argument.", "piccolo-build render"),
    ],
)
def test_usage_errors_of_the_real_program(argv: list[str], error: str, usage: str) -> None:
    r = run_builder(*argv)
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"error: {error}"
    assert lines[1].startswith(f"hint: usage: {usage} [OPTIONS]")
    assert len(lines) == 2, r.stderr


# --- piccolod ---------------------------------------------------------------------------------------------


def _agent_commands() -> dict[str, Any]:
    root = agent_cli.parser()
    (sub,) = [a for a in root._actions if a.dest == "command"]
    assert isinstance(sub.choices, dict)
    return dict(sub.choices)


AGENT_COMMANDS = sorted(_agent_commands())


def agent_usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], prog: str) -> str:
    with pytest.raises(SystemExit) as exc:
        agent_cli.main(argv)
    out, err = capsys.readouterr()
    assert (exc.value.code, out) == (3, ""), err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"{prog}: error: "), err
    assert lines[1].startswith(f"usage: {prog} "), err
    return lines[0].removeprefix(f"{prog}: error: ")


@pytest.mark.parametrize("command", AGENT_COMMANDS)
def test_piccolod_unknown_option_and_missing_values(capsys: pytest.CaptureFixture[str], command: str) -> None:
    message = agent_usage_error(capsys, [command, "--no-such-option"], f"piccolod {command}")
    assert message == "unrecognized arguments: --no-such-option"
    parser = _agent_commands()[command]
    valued = [a for a in parser._actions if a.option_strings and a.nargs is None and a.const is None]
    for action in valued:
        option = max(action.option_strings, key=len)
        message = agent_usage_error(capsys, [command, option], f"piccolod {command}")
        assert message == f"argument {option}: expected one argument"


def test_piccolod_unknown_command_and_escapes(capsys: pytest.CaptureFixture[str]) -> None:
    message = agent_usage_error(capsys, ["stag"], "piccolod")
    assert message.startswith("argument COMMAND: invalid choice: 'stag'")
    message = agent_usage_error(capsys, ["--\x1b[31m"], "piccolod")
    assert message == "unrecognized arguments: --\\x1b[31m"


def test_piccolod_usage_error_as_a_real_process() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "piccolod", "check", "--jsno"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (r.returncode, r.stdout) == (3, "")
    assert r.stderr.splitlines() == [
        "piccolod check: error: unrecognized arguments: --jsno",
        "usage: piccolod check [-h] [--config FILE] [--json]",
    ]
