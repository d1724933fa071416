"""click's command tree of the CLI, walked once for the tests that check every command."""

from __future__ import annotations

import click

from tinyfed.cli import cli


def all_commands(*, groups: bool = True) -> list[tuple[str, click.Command]]:
    """Every command as (path, command), e.g. ``("runs list", ...)``; ``groups=False`` keeps the leaves."""
    found: list[tuple[str, click.Command]] = []

    def walk(cmd: click.Command, path: str) -> None:
        is_group = isinstance(cmd, click.Group)
        if groups or not is_group:
            found.append((path, cmd))
        if is_group:
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                walk(sub, f"{path} {name}".strip())

    walk(cli, "")
    return found
