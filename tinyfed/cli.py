"""The ``tinyfed`` command: a thin shell over the library.

One error boundary lives here: a :class:`~tinyfed.errors.TinyfedError` becomes one line on
stderr and a non-zero exit; the traceback is shown only with ``-v``. Each command lives in its
own module under :mod:`tinyfed.commands`.
"""

from __future__ import annotations

import json
import logging
import os
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
            self._fail(ctx, exc)
        except OSError as exc:  # a file the user named cannot be read or written
            name = f"{exc.filename}: " if exc.filename else ""
            self._fail(ctx, TinyfedError(f"{name}{exc.strerror or exc}", fix="check the path and its permissions"))
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, keep the traceback for -v
            self._fail(
                ctx,
                TinyfedError(f"internal error {type(exc).__name__}: {exc}",
                             fix="run again with -v and report the traceback"),
                code=3,
            )

    @staticmethod
    def _fail(ctx: click.Context, exc: TinyfedError, code: int | None = None) -> None:
        if ctx.find_root().params.get("verbose"):
            log.exception("tinyfed failed")
        if ctx.meta.get("tinyfed.json"):
            click.echo(json.dumps(exc.to_dict()))
        click.secho(f"error: {exc.one_line()}", fg="red", err=True)
        ctx.exit(code if code is not None else exc.exit_code)


@click.group(cls=TinyfedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks on errors.")
@click.version_option(__version__, prog_name="tinyfed")
def cli(verbose: int) -> None:
    """Federated learning on fleets of microcontrollers."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from tinyfed.commands import boards, check, demo, devices, emulate, firmware, flash, plan, profile, run, simulate

    cli.add_command(boards.boards)
    cli.add_command(plan.plan)
    cli.add_command(devices.devices)
    cli.add_command(emulate.emulate)
    cli.add_command(flash.flash)
    cli.add_command(check.check)
    cli.add_command(firmware.firmware)
    cli.add_command(run.run)
    cli.add_command(demo.demo)
    cli.add_command(simulate.simulate)
    cli.add_command(profile.profile)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tinyfed")


if __name__ == "__main__":
    main()
