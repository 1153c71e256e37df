"""`promo`'s conventions, needing no running service: --version, tab completion, each
command's --help holding its own options and runnable examples, and exit statuses (2: the
command line is wrong; 1: the command could not be done)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from dotenv import dotenv_values

from promo_pipeline.cli import main, parser
from promo_pipeline.cli.stack import export_lines
from promo_pipeline.stack.local import write_env_file

PROMO = Path(sys.executable).with_name("promo")
UUID = "023e4567-e89b-12d3-a456-426614174000"


def commands(top: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser under `top` with its command line ("promo stack up"), depth first."""
    yield top.prog, top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from commands(sub)


def options(command: argparse.ArgumentParser) -> set[str]:
    return {flag for action in command._actions for flag in action.option_strings}


def complete(line: str, tmp_path: Path) -> list[str]:
    """What bash completion offers for `line`, asked of the installed script the way
    `register-python-argcomplete promo` asks it."""
    answer = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
    }
    done = subprocess.run([PROMO], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return sorted(answer.read_text().split("\n"))


def test_version_names_the_installed_package() -> None:
    done = subprocess.run([PROMO, "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"promo {version('promo_pipeline')}\n")


def test_tab_completion_offers_commands_actions_and_each_actions_own_options(
    tmp_path: Path,
) -> None:
    top = [name for name, _ in commands(parser())]
    verbs = sorted({name.split()[1] for name in top if len(name.split()) == 2})
    assert [c for c in complete("promo ", tmp_path) if not c.startswith("-")] == verbs
    assert complete("promo sta", tmp_path) == ["stack", "status"]
    assert [c for c in complete("promo stack ", tmp_path) if not c.startswith("-")] == [
        "down",
        "status",
        "up",
    ]
    assert complete("promo stack up --", tmp_path) == ["--dir", "--help", "--spark"]
    assert complete("promo stack up --spark ", tmp_path) == ["connect", "local"]


def test_a_command_with_actions_takes_its_options_per_action() -> None:
    """`promo stack up --help` shows up's options only: options live on the leaves."""
    for name, command in commands(parser()):
        has_actions = any(isinstance(a, argparse._SubParsersAction) for a in command._actions)
        if has_actions:
            allowed = {"-h", "--help"} | ({"--version"} if name == "promo" else set())
            assert options(command) <= allowed, name
    found = {name: options(command) for name, command in commands(parser())}
    assert found["promo stack up"] == {"-h", "--help", "--dir", "--spark"}
    assert found["promo stack down"] == found["promo stack status"] == {"-h", "--help", "--dir"}


def test_help_examples_piped_to_jq_survive_the_shell(capsys: pytest.CaptureFixture[str]) -> None:
    """Every `| jq ...` in a help's examples is split as a shell would split it, and jq
    compiles what it gets."""
    checked = 0
    for name, _ in commands(parser()):
        with pytest.raises(SystemExit):
            main([*name.split()[1:], "--help"])
        for line in capsys.readouterr().out.splitlines():
            if "| jq" not in line:
                continue
            words = shlex.split(line.split("| jq", 1)[1], comments=True)
            done = subprocess.run(["jq", "-n", *words], capture_output=True, text=True)
            assert done.returncode == 0, f"{name}: {line.strip()}: {done.stderr}"
            checked += 1
    assert checked >= 2  # promo tail's and promo status's


@pytest.mark.parametrize(
    "argv",
    [
        ["nope"],
        ["tail", "-n", "0"],
        ["stack", "up", "--spark", "yarn"],
        ["subscribe", "bob", UUID],
        ["subscribe", UUID, "123"],
        ["rewind", "--to-offsets", "0-10"],
        ["rewind", "--to-time", "yesterday"],
        ["send", "/no/such/campaigns.jsonl"],
    ],
)
def test_a_wrong_command_line_exits_2_in_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own checks
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("promo"), err


@pytest.mark.parametrize(
    ("setting", "value", "argv", "said"),
    [
        ("POSTGRES_PORT", "abc", ["status"], "promo: invalid settings: POSTGRES_PORT"),
        ("POSTGRES_PORT", "1", ["subscribe", UUID, UUID], "promo: Postgres does not answer"),
        ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1", ["tail"], "promo: Kafka at 127.0.0.1:1"),
    ],
)
def test_a_command_that_cannot_be_done_exits_1_in_one_line(
    setting: str,
    value: str,
    argv: list[str],
    said: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMO_STACK_DIR", "/nonexistent")  # no stack.env fallback
    monkeypatch.setenv(setting, value)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(said), err


AWKWARD = {
    "PROMO_STATE_DIR": "/tmp/my stack/it's $HOME/state",
    "POSTGRES_PASSWORD": 'a"b\\c#d e',
    "SPARK_MASTER": "local[2]",
}


def test_exports_and_env_files_give_back_every_value_unchanged(tmp_path: Path) -> None:
    """`eval "$(promo stack up)"` in bash and a .env read by python-dotenv (Dagster's and
    pydantic-settings' reader) see exactly the values, spaces and quotes included."""
    script = 'eval "$1"; for n in "${@:2}"; do printf "%s\\0" "${!n}"; done'
    shell = subprocess.run(
        ["bash", "-c", script, "-", export_lines(AWKWARD), *AWKWARD],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split("\0")[:-1] == list(AWKWARD.values())
    write_env_file(tmp_path / ".env", AWKWARD, header="# a header")
    assert dotenv_values(tmp_path / ".env") == AWKWARD
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("master", "noted"), [("local[2]", True), ("sc://127.0.0.1:1", False)])
def test_stack_status_names_the_engine_the_last_up_chose(
    master: str, noted: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stack status` has no --spark: the engine is the one `up` wrote to stack.env."""
    from promo_pipeline.stack import LocalStack

    stack = LocalStack(tmp_path / "stack")
    stack._load_config()  # its ports and password, as a first `up` writes them
    write_env_file(stack.env_file, {"SPARK_MASTER": master})
    assert main(["stack", "status", "--dir", str(stack.dir)]) == 0
    [connect] = [line for line in capsys.readouterr().out.splitlines() if "spark connect" in line]
    assert connect.startswith("spark connect stopped")
    assert connect.endswith("(runs use a local session)") == noted, connect
