"""The CLI imports a command's module only when that command is used: ``tinyfed --help`` lists every
command from :data:`tinyfed.cli.COMMANDS` without importing numpy, and those one-line helps stay
the commands' own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tinyfed.cli import COMMANDS, cli

sys.path.insert(0, str(Path(__file__).parent))
from _cli_tree import all_commands  # noqa: E402


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


def _all_commands() -> list[tuple[str, click.Command]]:
    """Every command of the CLI, groups included, as (path, command)."""
    return all_commands()


def test_fleet_is_spelled_and_typed_alike_in_every_command() -> None:
    """`--fleet FLEET`: one option (a TOML file or a preset's name) wherever a command takes a fleet."""
    import click

    fleets = {path: p for path, cmd in _all_commands() for p in cmd.params  # type: ignore[attr-defined]
              if "--fleet" in getattr(p, "opts", ())}
    assert set(fleets) >= {"plan", "devices", "check", "run"}
    for path, p in fleets.items():
        assert p.name == "fleet_path" and p.metavar == "FLEET", path
        assert isinstance(p.type, click.Path) and not p.type.dir_okay and not p.type.exists, path
        assert "shipped preset's name" in (p.help or ""), path


def test_every_option_has_help_a_shown_default_and_every_command_an_example() -> None:
    import click

    missing_help, hidden_default, no_example = [], [], []
    for path, cmd in _all_commands():
        if "Examples:" not in (cmd.help or ""):  # type: ignore[attr-defined]
            no_example.append(path or "tinyfed")
        for p in cmd.params:  # type: ignore[attr-defined]
            if not isinstance(p, click.Option) or p.hidden:
                continue
            if not p.help:
                missing_help.append(f"{path} {p.opts[0]}")
            concrete = p.default is not None and "Sentinel" not in repr(p.default)
            if concrete and not (p.is_flag or p.multiple or p.count or p.show_default):
                hidden_default.append(f"{path} {p.opts[0]}")
    assert not missing_help and not hidden_default and not no_example, (missing_help, hidden_default, no_example)


def _options_named(flag: str) -> dict[str, click.Option]:
    return {path: p for path, cmd in _all_commands() for p in cmd.params  # type: ignore[attr-defined]
            if isinstance(p, click.Option) and flag in p.opts and not p.hidden}


def test_counts_seeds_targets_and_outputs_share_one_name_and_type() -> None:
    """docs/cli.md's vocabulary, held by walking click's tree: how many boards is `--count N` (a
    positive integer), a seed a non-negative integer, a target accuracy in (0, 1], `--out` a directory."""
    counts = _options_named("--count")
    assert set(counts) >= {"emulate", "demo", "run", "simulate"}
    for path, p in counts.items():
        assert isinstance(p.type, click.IntRange) and p.type.min == 1, path
    for path, p in _options_named("--seed").items():
        assert isinstance(p.type, click.IntRange) and p.type.min == 0, path
    targets = _options_named("--target-accuracy")
    assert set(targets) >= {"demo", "run", "simulate"}
    for path, p in targets.items():
        assert isinstance(p.type, click.FloatRange) and (p.type.min, p.type.max, p.type.min_open) == (0, 1, True), path
    outs = _options_named("--out")
    assert set(outs) >= {"emulate", "demo", "run", "simulate", "plan", "firmware build"}
    for path, p in outs.items():
        assert isinstance(p.type, click.Path) and not p.type.file_okay and p.metavar == "DIR", path
    for old in ("--clients", "--boards"):  # old spellings still parse but are not offered
        assert not _options_named(old), old


def test_simulate_and_emulate_take_an_optional_count() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "--simulate", "2", "--count", "3", "--max-versions", "1"])
    assert result.exit_code == 2 and "--simulate 2 and --count 3 disagree" in result.output
    result = runner.invoke(cli, ["run", "--simulate", "0"])
    assert result.exit_code == 2 and "give at least 1" in result.output
    result = runner.invoke(cli, ["run", "--fleet", "smartwatch", "--count", "3"])
    assert result.exit_code == 2 and "--count is for --emulate / --simulate" in result.output
    from tinyfed.commands.options import resolve_count

    assert resolve_count("simulate", 0, None) == 8 and resolve_count("simulate", 0, 3) == 3
    assert resolve_count("simulate", 5, None) == 5 and resolve_count("emulate", 4, 4) == 4


def test_shell_completion_offers_boards_and_zoo_models() -> None:
    from click.shell_completion import ShellComplete

    def complete(args: list[str], incomplete: str) -> list[str]:
        sc = ShellComplete(cli, {}, "tinyfed", "_TINYFED_COMPLETE")
        return [c.value for c in sc.get_completions(args, incomplete)]

    assert complete(["run", "--board"], "nrf") == ["nrf52840"]
    assert complete(["emulate", "--board"], "mps3") == ["mps3-an547"]
    assert complete(["plan"], "har") == ["har_cnn"] and complete(["check"], "dig") == ["digits_cnn"]
    assert "mps2-an386" in complete(["boards", "show"], "mps2")
    assert complete([], "sim") == ["simulate"]
    script = subprocess.run([sys.executable, "-c", "from tinyfed.cli import main; main()"], capture_output=True,
                            text=True, env={**__import__("os").environ, "_TINYFED_COMPLETE": "bash_source"})
    assert "_TINYFED_COMPLETE=bash_complete" in script.stdout
