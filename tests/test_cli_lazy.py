"""The CLI imports a command's module only when that command is used: ``tinyfed --help`` lists every
command from :data:`tinyfed.cli.COMMANDS` without importing numpy, and those one-line helps stay
the commands' own."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tinyfed.cli import COMMANDS, cli


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_help_is_the_commands_own(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None and command.name == name
    assert command.get_short_help_str(limit=10_000) == COMMANDS[name]


def test_every_command_module_is_listed() -> None:
    from pathlib import Path

    import tinyfed.commands

    helpers = {"__init__", "options", "console"}  # shared by the commands, not commands
    modules = {p.stem for p in Path(tinyfed.commands.__file__).parent.glob("*.py")} - helpers
    assert modules == set(COMMANDS)


def test_help_lists_every_command_and_an_unknown_one_is_refused() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:")[1]
    assert all(f"  {name} " in listed for name in COMMANDS)
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2 and "No such command 'no-such-command'" in result.output


def test_top_level_help_imports_no_numpy() -> None:
    code = ("import sys; from tinyfed.cli import cli\n"
            "try:\n    cli(['--help'], prog_name='tinyfed')\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('numpy', 'pydantic', 'tinyfed.planner', 'tinyfed.host') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_check_help_says_it_loads_the_whole_model() -> None:
    """`check` loads the whole model when the firmware runs all of it (frozen_fragment): its help says so."""
    result = CliRunner().invoke(cli, ["check", "--help"])
    assert result.exit_code == 0
    assert "whole model" in result.output and "frozen fragment" not in result.output
    assert "frozen fragment" not in COMMANDS["check"]
