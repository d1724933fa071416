"""``tinyfed check MODEL --fleet FILE``: run a model's frozen fragment on every board, compare with TFLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import click
import numpy as np
from rich import box
from rich.table import Table

from tinyfed.commands.console import output_console, phase
from tinyfed.commands.options import FiniteFloatRange, boards_dir_option, fleet_option, json_option, url_option
from tinyfed.errors import ModelError

#: The most inputs `check` runs per board: each is a round trip over the link.
MAX_CHECK_SAMPLES = 100_000


def _tflite_bytes(model: str) -> tuple[str, bytes]:
    path = Path(model)
    if path.suffix == ".tflite":
        if not path.is_file():
            raise ModelError(f"no such file {model}", fix="give the path of an int8 .tflite file")
        from tinyfed.models.tflite_graph import read_model_bytes

        return path.name, read_model_bytes(path)
    from tinyfed.models.zoo import ZOO_NAMES, get_zoo_model

    if path.suffix in (".keras", ".h5"):  # a float model: check runs what the boards run, the int8 model
        raise ModelError(f"{model} is a Keras model; check runs an int8 .tflite on the boards",
                         fix=f"convert it first: `tinyfed plan {model} --representative calib.npy --board BOARD` "
                             "writes the int8 model (plan/model_int8.tflite) to check")
    if model not in ZOO_NAMES:
        get_zoo_model(model)  # raises ModelError with the closest zoo name
    return model, get_zoo_model(model).int8_tflite()


@click.command("check")
@click.argument("model")
@fleet_option("The boards to check: its entries list device URLs (`tinyfed emulate --out` writes one).")
@url_option
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path),
              help=".npz of inputs (array x, batch first; float is quantized). Default: random int8 inputs.")
@click.option("--samples", type=click.IntRange(1, MAX_CHECK_SAMPLES), default=16, show_default=True,
              help="Inputs to run per board.")
@click.option("--timeout", type=FiniteFloatRange(0, 60, min_open=True), default=0.5, show_default=True,
              help="Seconds to wait for each response.")
@boards_dir_option
@json_option
def check(model: str, fleet_path: Path | None, url: str | None, data_path: Path | None, samples: int, timeout: float,
          boards_dirs: tuple[Path, ...], as_json: bool) -> None:
    """Load MODEL (a zoo name or an int8 .tflite) onto every board, run inputs on it, and compare
    every output with TFLite Micro on the host. Exits 1 on any mismatch or failure.

    The whole model is loaded when the firmware can run all of it, otherwise the longest head that
    it can (the report names which).

    \b
    Examples:
      tinyfed check har_cnn --fleet fleet.toml --samples 32
      tinyfed check my_model_int8.tflite --fleet fleet.toml --data inputs.npz --json
      tinyfed check har_cnn --url socket://127.0.0.1:5000
    """
    from tinyfed.firmware_bridge.link.devices import (
        check_devices,
        fleet_or_url,
        frozen_fragment,
        load_inputs,
    )
    from tinyfed.models.tflm import TflmModel

    fleet = fleet_or_url(fleet_path, url, boards_dirs)
    with phase(f"loading {model} and its TFLite Micro reference outputs", quiet=as_json):
        name, tflite = _tflite_bytes(model)
        fragment = frozen_fragment(tflite, source=name)
        reference = TflmModel(fragment.tflite, source=name)
        x = load_inputs(data_path, reference, samples)
        expected = cast(np.ndarray, reference.run(x))  # a frozen fragment has one output, so one array
    with phase(f"loading {len(fragment.blob):,} bytes onto {len(fleet.devices)} device(s) and running {len(x)} "
               "inputs", quiet=as_json):
        rows = check_devices(fleet.devices, fragment, x, expected, timeout=timeout)
    ok = all(r["error"] is None and r["mismatches"] == 0 for r in rows)
    if as_json:
        click.echo(json.dumps({"model": name, "fragment": fragment.label, "blob_bytes": len(fragment.blob),
                               "fleet": fleet.name, "ok": ok, "devices": rows}))
    else:
        console = output_console()
        table = Table(title=f"{name}: {fragment.label}, blob {len(fragment.blob):,} bytes", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("device", "url", "samples", "mismatches", "max_abs_diff", "status"):
            table.add_column(col, justify="right" if col in ("samples", "mismatches", "max_abs_diff") else "left")
        for r in rows:
            status = "[green]bit-exact[/]" if r["error"] is None and r["mismatches"] == 0 else (
                f"[red]{r['error_type']}[/]: {r['error']}" if r["error"] else "[red]MISMATCH[/]")
            table.add_row(r["name"], r["url"] or "-", str(r["samples"]), str(r["mismatches"]),
                          "-" if r["max_abs_diff"] is None else str(r["max_abs_diff"]), status)
        console.print(table)
    if not ok:
        raise SystemExit(1)
