"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

#: Extra board directories: ``--boards-dir`` (repeatable) and the ``TINYFED_BOARDS_PATH``
#: environment variable (``os.pathsep``-separated) are both searched after the built-in boards.
boards_dir_option = click.option(
    "--boards-dir",
    "boards_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory with extra board TOML files (repeatable; also $TINYFED_BOARDS_PATH).",
)

def fleet_option(purpose: str, *, required: bool = False) -> Any:
    """``--fleet FLEET`` with one type and spelling in every command: a fleet TOML file or a shipped
    preset's bare name (``tinyfed.boards.fleet.fleet_file`` resolves both); ``purpose`` starts the help."""
    return click.option("--fleet", "fleet_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FLEET",
                        required=required,
                        help=f"{purpose} A fleet TOML file, or a shipped preset's name (smartwatch, emulated).")


#: One device instead of a fleet file (``devices``, ``check``).
url_option = click.option("--url", metavar="URL",
                          help="One device instead of --fleet: a tty (/dev/ttyACM0), socket://HOST:PORT or sim://BOARD.")


#: The nested-subset plan's cap on the common core (``plan``, ``simulate``, ``run``): one spelling, one check.
core_budget_option = click.option(
    "--core-budget",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Cap the common core w*'s training memory: a fraction of whole-model training memory (<= 1, e.g. 0.1) "
         "or bytes (> 1).",
)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """Record --json where the CLI's error boundary can see it (ctx.meta is shared by all contexts)."""
    if value:
        ctx.meta["tinyfed.json"] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_remember_json,
    help="Print one JSON object on stdout (an error too, as {error, problem, fix, source}).",
)


#: ``ctx.meta`` key: the port ``--dashboard`` asked for (absent: no dashboard).
DASHBOARD = "tinyfed.dashboard"


def _remember_dashboard(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if param.name == "dashboard" and value:
        ctx.meta.setdefault(DASHBOARD, 0)
    elif param.name == "dashboard_port" and value is not None:
        ctx.meta[DASHBOARD] = value
    return value


def dashboard_option(command: Any) -> Any:
    """``--dashboard`` and ``--dashboard-port`` (run, demo, simulate): kept in ``ctx.meta``, not passed to
    the command, which calls :func:`start_dashboard` once it knows its output directory."""
    command = click.option("--dashboard-port", type=click.IntRange(0, 65535), default=None, expose_value=False,
                           callback=_remember_dashboard, is_eager=True,
                           help="Port of --dashboard (implies it; default: a free port).")(command)
    return click.option("--dashboard", is_flag=True, expose_value=False, callback=_remember_dashboard,
                        is_eager=True, help="Serve the live web dashboard of this run on 127.0.0.1 while it goes "
                                            "(see `tinyfed dashboard`).")(command)


def start_dashboard(out: Path) -> None:
    """Start the web dashboard on ``out`` if ``--dashboard`` asked for it; it stops when the command ends."""
    ctx = click.get_current_context()
    port = ctx.meta.get(DASHBOARD)
    if port is None:
        return
    from tinyfed.web.serve import BackgroundDashboard

    server = BackgroundDashboard([out], port=port)
    ctx.call_on_close(server.stop)
    click.echo(f"dashboard {server.url}", err=True)
