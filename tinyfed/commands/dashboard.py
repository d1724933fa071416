"""``tinyfed dashboard``: a live web page of runs and simulate studies (docs/dashboard.md).

    tinyfed dashboard runs/lab
    tinyfed dashboard runs/a runs/b build/sim --port 8050
    tinyfed dashboard runs/lab --host 0.0.0.0 --token s3cret

Read-only: it reads the directories and can never change a run. It binds 127.0.0.1; any other
address needs ``--token``, which every request then carries (the printed address holds it).
"""

from __future__ import annotations

from pathlib import Path

import click

from tinyfed.errors import TinyfedError

#: Files any of which makes a directory one the dashboard can show.
KNOWN_FILES = ("events.jsonl", "devices.json", "config.toml", "study.json", "history.csv")


def _check_dirs(run_dirs: tuple[Path, ...]) -> None:
    """Each path must be a directory; one with none of a run's files is served (a run may be about to
    write it) after a warning."""
    for d in run_dirs:
        if not d.exists():
            raise TinyfedError("no such run directory", source=str(d),
                               fix="give a directory made by `tinyfed run`, `demo` or `simulate --out` (or start the "
                                   "run with --dashboard, which waits for its directory)")
        if not d.is_dir():
            raise TinyfedError("not a directory", source=str(d),
                               fix="give the run's directory, not a file in it")
        if not any((d / name).exists() for name in KNOWN_FILES):
            click.echo(f"{d}: no run files yet ({', '.join(KNOWN_FILES)}); the page waits for them", err=True)


@click.command("dashboard")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR...")
@click.option("--port", type=click.IntRange(0, 65535), default=8050, show_default=True,
              help="TCP port to serve on (0: a free port).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but 127.0.0.1/localhost/::1 needs --token.")
@click.option("--token", default=None, help="Secret every request must carry (?token=...); needed with --host.")
def dashboard(run_dirs: tuple[Path, ...], port: int, host: str, token: str | None) -> None:
    """Serve a live web page of runs and simulate studies: versions, metric, boards, aggregations.

    \b
    Examples:
      tinyfed dashboard runs/lab
      tinyfed dashboard runs/a build/sim --port 0
      tinyfed dashboard runs/lab --host 0.0.0.0 --token s3cret
    """
    from tinyfed.web.serve import DashboardError, check_bind, serve_forever

    try:
        check_bind(host, token)
    except DashboardError as exc:
        raise click.UsageError(exc.one_line()) from None
    _check_dirs(run_dirs)
    serve_forever(list(run_dirs), host, port, token,
                  announce=lambda url: click.echo(f"dashboard {url} (Ctrl-C stops)", err=True))
