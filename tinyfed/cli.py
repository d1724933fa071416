"""The ``tinyfed`` command: a thin shell over the library.

One error boundary lives here: a :class:`~tinyfed.errors.TinyfedError` becomes one line on
stderr and a non-zero exit; the traceback is shown only with ``-v``. Each command lives in its
own module under :mod:`tinyfed.commands`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from tinyfed import __version__
from tinyfed.errors import TinyfedError

log = logging.getLogger("tinyfed")

# TensorFlow (imported lazily for conversion) logs C++ chatter to stderr; keep it to errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class TinyfedGroup(click.Group):
    """A click group whose ``main`` turns tinyfed errors into one actionable line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TinyfedError as exc:
            verbose = bool(ctx.find_root().params.get("verbose"))
            if verbose:
                log.exception("tinyfed failed")
            wants_json = _wants_json(ctx)
            if wants_json:
                click.echo(json.dumps(exc.to_dict()), err=True)
            click.secho(f"error: {exc.one_line()}", fg="red", err=True)
            ctx.exit(exc.exit_code)


def _wants_json(ctx: click.Context) -> bool:
    sub = ctx.invoked_subcommand
    return "--json" in sys.argv[1:] and sub is not None


@click.group(cls=TinyfedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks on errors.")
@click.version_option(__version__, prog_name="tinyfed")
def cli(verbose: int) -> None:
    """Federated learning on fleets of microcontrollers."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from tinyfed.commands import boards, plan

    cli.add_command(boards.boards)
    cli.add_command(plan.plan)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tinyfed")


if __name__ == "__main__":
    main()
