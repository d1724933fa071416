"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

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

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
