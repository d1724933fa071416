"""The ``tinyfed`` command: a thin shell over the library.

One error boundary lives here: a :class:`~tinyfed.errors.TinyfedError` becomes one line on
stderr and a non-zero exit; the traceback is shown only with ``-v``. Each command lives in its
own module under :mod:`tinyfed.commands`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Any

import click

from tinyfed import __version__
from tinyfed.errors import TinyfedError, WriteError

log = logging.getLogger("tinyfed")

# TensorFlow (imported lazily for conversion) logs C++ chatter to stderr; keep it to errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


#: Exit codes: 0 done; 1 a check failed or a run stopped before its target; 2 usage or bad input
#: (click's usage errors and :class:`~tinyfed.errors.TinyfedError`); 3 an internal error; 130 Ctrl-C.
EXIT_FAILED = 1
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
#: ``ctx.meta`` key: the command that continues what an interrupted command leaves (set by ``run``, ``demo``)
RESUME_HINT = "tinyfed.resume_hint"
#: ``ctx.meta`` key: the run directory the command writes (set with :data:`RESUME_HINT`), named by write errors
RUN_DIR = "tinyfed.run_dir"


#: Every command: the module under ``tinyfed.commands`` that defines it (as an attribute of the same
#: name) and its one-line help. A command's module is imported only when the command runs (or its
#: own help is asked for), so ``tinyfed --help`` imports neither numpy nor the planner;
#: ``tests/test_cli_lazy.py`` holds these lines to the commands' own.
COMMANDS: dict[str, str] = {
    "boards": "Board profiles: what each microcontroller offers for training.",
    "plan": "Plan MODEL (a zoo name, a .keras or an int8 .tflite) onto a board or a fleet.",
    "devices": "List every device of a fleet: board id, firmware build, protocol, free RAM/flash, round-trip time.",
    "emulate": "Boot COUNT emulated boards, print their URLs, and keep them running until Ctrl-C.",
    "flash": "Flash the tinyfed firmware onto a board attached through a CMSIS-DAP/J-Link/ST-Link probe.",
    "check": "Load MODEL (a zoo name or an int8 .tflite) onto every board, run inputs on it, and compare every "
             "output with TFLite Micro on the host.",
    "firmware": "The board firmware: build it (then `tinyfed flash` or `tinyfed emulate`).",
    "run": "Train a model across a fleet and print where the run stands after every new version.",
    "demo": "Boot 8 emulated boards, plan har_cnn on them and train it with FTTE to a target accuracy.",
    "simulate": "Simulate FTTE and its baselines on hundreds of heterogeneous, straggling boards.",
    "runs": "Past runs: list them, show one, compare several, export to CSV or TensorBoard.",
    "profile": "Run MODEL's frozen fragment on a board once per kernel path; print each op's instructions "
               "(emulated) or cycles (a real board), MACs and instructions per MAC.",
    "dashboard": "Serve a live web page of runs and simulate studies: versions, metric, boards, aggregations.",
    "keys": "The fleet key store: list the provisioned boards (never their keys), forget one.",
    "doctor": "Check what is installed for each capability and say what installs the rest.",
}


#: Parameters whose values shell completion offers from tinyfed's own names (docs/cli.md): the
#: board profiles for a board, the zoo for a model; ``boards show NAME`` takes a board too.
_COMPLETED_PARAMS = {"board_name": "boards", "model": "models", "name": "boards"}


def _add_name_completion(command: click.Command) -> None:
    """Give ``--board``, ``--model`` and ``MODEL`` completion of board and zoo names, in every command
    and subcommand, unless a parameter brings its own."""
    from tinyfed.commands.options import complete_board_names, complete_model_names

    complete = {"boards": complete_board_names, "models": complete_model_names}
    for param in command.params:
        kind = _COMPLETED_PARAMS.get(param.name or "")
        if kind is not None and param._custom_shell_complete is None:
            param._custom_shell_complete = complete[kind]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_name_completion(sub)


def _is_validation_error(exc: BaseException) -> bool:
    """A pydantic ValidationError, recognised without importing pydantic on the way in."""
    return type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic")


def _validation_problem(exc: Any) -> str:
    """pydantic's errors as one line: each field and what it must be, without its documentation links."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err.get("loc", ())) or "value"
        parts.append(f"{field.replace('_', '-')}: {err.get('msg', 'invalid')} (got {err.get('input')!r})")
    return "invalid " + "; ".join(parts)


def _os_error(exc: OSError, run_dir: Any, hint: Any) -> TinyfedError:
    """An OSError as one line: its file, or the run directory being written when the error names none
    (a write's ENOSPC often carries no file name)."""
    import errno

    reason = exc.strerror or str(exc)
    if exc.filename:
        where = str(exc.filename)
    elif run_dir:
        where, reason = str(run_dir), f"{reason} while writing the run"
    else:
        return TinyfedError(reason, fix="check the paths the command reads and writes and their permissions")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk holding {where}" + (f", then `{hint}`" if hint else "")
    else:
        fix = f"check {where} and its permissions"
    return TinyfedError(reason, fix=fix, source=where)


class TinyfedGroup(click.Group):
    """A click group whose ``main`` turns tinyfed errors into one actionable line, and that imports
    a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"tinyfed.commands.{cmd_name}")
        command: click.Command = getattr(module, cmd_name)
        _add_name_completion(command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands' one-line helps from :data:`COMMANDS`, laid out as click lays out its own."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.Command(name, help=COMMANDS[name]).get_short_help_str(limit))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TinyfedError as exc:
            hint = ctx.meta.get(RESUME_HINT)
            if isinstance(exc, WriteError) and hint:  # a full disk: what was checkpointed goes on once there is room
                exc = WriteError(exc.problem, fix=f"{exc.fix}, then `{hint}`", source=exc.source)
            self._fail(ctx, exc)
        except OSError as exc:  # a file the user named cannot be read or written
            self._fail(ctx, _os_error(exc, ctx.meta.get(RUN_DIR), ctx.meta.get(RESUME_HINT)))
        except (KeyboardInterrupt, click.Abort):
            # Ctrl-C: not click's "Aborted!" and exit 1, but what was kept and how to go on
            hint = ctx.meta.get(RESUME_HINT)
            click.secho("interrupted" + (f"; continue with `{hint}`" if hint else ""), fg="yellow", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line, keep the traceback for -v
            if _is_validation_error(exc):  # a value pydantic refused that no option range caught: bad input
                self._fail(ctx, TinyfedError(_validation_problem(exc),
                                             fix=f"give a value in range (`tinyfed {ctx.invoked_subcommand} --help`)"))
            self._fail(
                ctx,
                TinyfedError(f"internal error {type(exc).__name__}: {exc}",
                             fix="run again with -v and report the traceback"),
                code=EXIT_INTERNAL,
            )

    @staticmethod
    def _fail(ctx: click.Context, exc: TinyfedError, code: int | None = None) -> None:
        if ctx.find_root().params.get("verbose"):
            log.exception("tinyfed failed")
        if ctx.meta.get("tinyfed.json"):
            click.echo(json.dumps(exc.to_dict()))
        click.secho(f"error: {exc.one_line()}", fg="red", err=True)
        ctx.exit(code if code is not None else exc.exit_code)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--version``: the package's version and the firmware protocol's (``link.framing.PROTOCOL_VERSION``,
    which tests/test_wire_constants.py holds equal to firmware/src/protocol.h's PROTO_VERSION)."""
    if not value or ctx.resilient_parsing:
        return
    from tinyfed.doctor import protocol_version

    click.echo(f"tinyfed {__version__}, firmware protocol {protocol_version()}")
    ctx.exit()


@click.group(cls=TinyfedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks on errors.")
@click.option("--key-store", "key_store", type=click.Path(dir_okay=False), metavar="FILE",
              help="The fleet key store: every board's device key (default $TINYFED_KEY_STORE, else "
                   "$XDG_DATA_HOME/tinyfed/keys.json; docs/security.md).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show tinyfed's version and the firmware protocol version it speaks, and exit.")
def cli(verbose: int, key_store: str | None) -> None:
    """Federated learning on fleets of microcontrollers.

    \b
    Examples:
      tinyfed demo
      tinyfed plan har_cnn --board nrf52840
      tinyfed --key-store lab-keys.json run --fleet lab.toml
      tinyfed COMMAND --help
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if key_store:
        _use_key_store(click.get_current_context(), key_store)


#: ``tinyfed.firmware_bridge.link.keys.KEY_STORE_ENV``, restated so that ``tinyfed --help`` imports no link code.
KEY_STORE_ENV = "TINYFED_KEY_STORE"


def _use_key_store(ctx: click.Context, path: str) -> None:
    """Every link, launcher and provisioning of the command uses ``path`` as the key store (through
    the environment, which emulator launches and worker threads also see); undone when the command ends."""
    previous = os.environ.get(KEY_STORE_ENV)
    os.environ[KEY_STORE_ENV] = os.path.abspath(os.path.expanduser(path))

    def restore() -> None:
        if previous is None:
            os.environ.pop(KEY_STORE_ENV, None)
        else:
            os.environ[KEY_STORE_ENV] = previous

    ctx.call_on_close(restore)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tinyfed")


if __name__ == "__main__":
    main()
