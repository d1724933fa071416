"""The field's models (issue 13): per look-alike, what it is, where it fits, whether it is bit-exact, how it trains.

For every look-alike in ``tests/field_models.py`` (built, briefly pretrained and converted here):
its TFLite ops, parameters and MACs; its plan on the nRF52840 (w* size, cut, predicted RAM);
mismatching samples against TFLite Micro on random int8 inputs through the numpy twin (what a
``sim://`` board runs) and on QEMU ``mps2-an386`` / ``mps3-an547`` (the real firmware, booted with
``-icount shift=4`` so one inference's SysTick count gives instructions per MAC); and the task's
metric at version 0 and after a 10-version ``tinyfed run --simulate 8``. Prints a table (and JSON
with ``--json``). A part that fails prints its first error in the table instead of a number.

Run: ``.venv/bin/python bench/field_models.py [--models ds_cnn,sine] [--sim-inputs 2000]
[--qemu-inputs 200] [--no-qemu] [--no-train] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from field_models import (  # noqa: E402
    FIELD_MODELS,
    RUN_BOARD,
    FieldModel,
    build_field_model,
    local_samples_cap,
    qemu_fragment,
    run_config,
)

from tinyfed.boards import get_board, single_board_fleet  # noqa: E402
from tinyfed.firmware_bridge.compile.blob import compile_blob  # noqa: E402
from tinyfed.firmware_bridge.twin.kernels_np import run_blob  # noqa: E402
from tinyfed.host.simulator import graph_macs  # noqa: E402
from tinyfed.models.convert import op_names  # noqa: E402
from tinyfed.models.tflite_graph import TfliteGraph  # noqa: E402
from tinyfed.models.tflm import TflmModel  # noqa: E402

QEMU_KINDS = ("mps2-an386", "mps3-an547")
ICOUNT_SHIFT = 4  # as bench/speed.py: one instruction = 2**4 ns of virtual time


def first_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]


def attempt(row: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """``row[key] = fn()``, or the first line of its error."""
    try:
        row[key] = fn()
    except Exception as exc:  # noqa: BLE001 - a bench reports every failure and goes on
        row[key] = first_error(exc)


def mismatches(got: np.ndarray, want: np.ndarray) -> int:
    n = want.shape[0]
    return int(np.count_nonzero(np.any(np.asarray(got).reshape(n, -1) != want.reshape(n, -1), axis=1)))


def random_inputs(reference: TflmModel, n: int, seed: int) -> np.ndarray:
    shape = tuple(reference.input_details[0]["shape"][1:])
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *shape), dtype=np.int8)


def plan_row(path: Path, out: Path) -> dict[str, Any]:
    from tinyfed.planner.config import TrainingConfig
    from tinyfed.planner.plan import make_plan
    from tinyfed.planner.sources import load_model_source

    cfg = TrainingConfig()
    plan = make_plan(load_model_source(str(path), None, cfg), single_board_fleet(get_board("nrf52840")), cfg, out,
                     measure=False)
    doc = json.loads((out / "plan.json").read_text())
    board = doc["boards"]["nrf52840"]
    return {"fits": plan.fits, "w_star_params": plan.trainable_params, "cut_op": plan.cut,
            "ram_bytes_predicted": board["ram_bytes_used"], "training_ram_bytes": plan.training.total,
            "importance": doc["importance"], "problems": plan.problems}


def sim_mismatches(tflite: bytes, n: int) -> int:
    reference = TflmModel(tflite)
    x = random_inputs(reference, n, seed=13)
    return mismatches(run_blob(compile_blob(tflite), x), np.asarray(reference.run(x)))


def _infer_share(url: str, blob: bytes, x: np.ndarray) -> tuple[np.ndarray, int]:
    from tinyfed.firmware_bridge.link.client import BoardClient

    with BoardClient(url, name=url, timeout=60.0) as client:
        client.load_fragment(blob)
        outs = []
        cycles = 0
        for i in range(len(x)):
            outs.append(client.infer(x[i : i + 1]))
            cycles = cycles or client.last_cycles
        return np.stack(outs), cycles


def qemu_row(urls: list[str], clock_hz: int, fragment: bytes, n: int, macs: int) -> dict[str, Any]:
    """Mismatches of ``n`` random inputs shared over ``urls``, and instructions per MAC of one inference."""
    reference = TflmModel(fragment)
    x = random_inputs(reference, n, seed=15)
    want = np.asarray(reference.run(x))
    blob = compile_blob(fragment)
    shares = np.array_split(np.arange(n), len(urls))
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(urls)) as pool:
        parts = list(pool.map(lambda u, idx: _infer_share(u, blob, x[idx]), urls, shares))
    got = np.concatenate([p[0] for p in parts])
    insn = parts[0][1] * 1e9 / clock_hz / 2 ** ICOUNT_SHIFT
    return {"mismatches": mismatches(got, want), "seconds": round(time.monotonic() - t0, 1),
            "insn_per_mac": round(insn / macs, 2) if macs else None}


def federated(fm: FieldModel, tflite: Path, npz: Path, work: Path) -> dict[str, Any]:
    """Metric at version 0 and at the end of a 10-version run on 8 simulated nRF52840s."""
    from tinyfed.host.events import read_events

    out = work / f"run_{fm.spec.name}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.monotonic()
    board = RUN_BOARD.get(fm.spec.name, "nrf52840")
    cap = local_samples_cap(fm.data, board)  # what a board's local-data store holds
    config = work / "run.toml"
    config.write_text(run_config(fm.spec.name))
    target = ["--target-accuracy", "1.0"] if fm.spec.task == "classify" else ["--target-metric", "1.0"]
    proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", "run", "--config", str(config), "--simulate", "8",
                           "--board", board, "--model", str(tflite), "--data", str(npz), "--partition", "iid",
                           "--max-versions", "10", *target, *(["--max-windows", str(cap)] if cap else []),
                           "--out", str(out), "--json"], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        return {"error": (lines[-1] if lines else f"exit {proc.returncode}")[:200]}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    evals = [e for e in read_events(out) if e.get("kind") == "evaluation"]
    key = str(evals[0].get("metric", "accuracy"))  # the task's metric (accuracy, r2, auc)
    return {"metric": key, "before": round(evals[0][key], 4), "after": round(evals[-1][key], 4),
            "best": round(max(e[key] for e in evals), 4),
            "versions": summary["versions"], "local_samples_cap": cap, "auc": summary.get("final_auc"),
            "seconds": round(time.monotonic() - t0, 1)}


@contextlib.contextmanager
def qemu_boards(per_kind: int):
    """``per_kind`` boards of each QEMU kind under ``-icount``: {kind: (urls, SysTick clock, fragment slot)}."""
    from tinyfed.firmware_bridge.emulate.build import build_firmware
    from tinyfed.firmware_bridge.emulate.emulator import launch_qemu

    with contextlib.ExitStack() as stack:
        found: dict[str, tuple[list[str], int, int]] = {}
        for kind in QEMU_KINDS:
            elf = build_firmware(kind)
            urls = [stack.enter_context(launch_qemu(kind, elf, name=f"{kind}#{i}",
                                                    extra_args=("-icount", f"shift={ICOUNT_SHIFT}"))).url
                    for i in range(per_kind)]
            found[kind] = (urls, *board_facts(urls[0]))
        yield found


def board_facts(url: str) -> tuple[int, int]:
    """The clock the firmware's SysTick counts at (from its BENCH answer, as bench/speed.py reads it) and
    its fragment slot in bytes (HELLO)."""
    import struct

    from tinyfed.firmware_bridge.link.client import BoardClient
    from tinyfed.firmware_bridge.link.framing import Command

    with BoardClient(url, name=url, timeout=60.0) as client:
        answer = client.request(Command.BENCH, struct.pack("<H", 1))
        slot = client.hello().fragment_slot_bytes
    return int(struct.unpack_from("<IIIII", answer)[4]), int(slot)


def bench_model(name: str, args: argparse.Namespace, work: Path, boards: dict | None) -> dict[str, Any]:
    t0 = time.monotonic()
    fm = build_field_model(name)
    tflite = work / f"{name}.tflite"
    tflite.write_bytes(fm.tflite)
    npz = work / f"{name}.npz"
    np.savez(npz, **fm.data.npz())
    graph = TfliteGraph.from_bytes(fm.tflite)
    macs = graph_macs(graph)
    row: dict[str, Any] = {"model": name, "description": fm.spec.description, "task": fm.spec.task,
                           "ops": dict(Counter(op_names(fm.tflite))), "params": fm.params, "macs": macs,
                           "tflite_bytes": len(fm.tflite), "seconds": {k: round(v, 1) for k, v in fm.seconds.items()},
                           "keras_pretrained": round(fm.keras_metric_pretrained, 4),
                           "keras_start": round(fm.keras_metric_start, 4)}
    attempt(row, "plan", lambda: plan_row(tflite, work / f"plan_{name}"))
    attempt(row, "sim_mismatches", lambda: sim_mismatches(fm.tflite, args.sim_inputs))
    if boards is not None:
        for kind, (urls, clock, slot) in boards.items():
            fragment = qemu_fragment(fm.tflite, slot)  # the longest head that fits the firmware's slot
            if fragment is not fm.tflite:
                row[f"{kind} runs"] = f"head of {len(TfliteGraph.from_bytes(fragment).ops)} ops"
            attempt(row, kind, lambda u=urls, c=clock, f=fragment: qemu_row(
                u, c, f, args.qemu_inputs, graph_macs(TfliteGraph.from_bytes(f))))
    if args.train:
        attempt(row, "federated", lambda: federated(fm, tflite, npz, work))
    row["seconds"]["total"] = round(time.monotonic() - t0, 1)
    return row


def _cell(v: Any, key: str | None = None) -> str:
    if isinstance(v, dict) and key is not None:
        v = v.get(key, v.get("error", "-"))
    if isinstance(v, str):
        return v[:40]
    return "-" if v is None else str(v)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["model", "ops", "params", "MACs", "fits", "w*", "RAM pred", "sim mism", "an386 mism", "an547 mism",
            "an386 i/MAC", "an547 i/MAC", "metric", "before", "after"]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        plan = r.get("plan") if isinstance(r.get("plan"), dict) else {"error": r.get("plan")}
        fed = r.get("federated") if isinstance(r.get("federated"), dict) else {"error": r.get("federated")}
        ops = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in r["ops"].items())
        cells = [r["model"], ops, r["params"], r["macs"], _cell(plan, "fits"), _cell(plan, "w_star_params"),
                 _cell(plan, "ram_bytes_predicted"), _cell(r.get("sim_mismatches")),
                 _cell(r.get("mps2-an386"), "mismatches"), _cell(r.get("mps3-an547"), "mismatches"),
                 _cell(r.get("mps2-an386"), "insn_per_mac"), _cell(r.get("mps3-an547"), "insn_per_mac"),
                 _cell(fed, "metric"), _cell(fed, "before"), _cell(fed, "after")]
        print(" | ".join(str(c) for c in cells))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(FIELD_MODELS), help="comma-separated look-alike names")
    p.add_argument("--sim-inputs", type=int, default=2000)
    p.add_argument("--qemu-inputs", type=int, default=200)
    p.add_argument("--boards-per-kind", type=int, default=2, help="QEMU boards per kind (inference is I/O-bound)")
    p.add_argument("--no-qemu", dest="qemu", action="store_false")
    p.add_argument("--no-train", dest="train", action="store_false")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinyfed-field-") as tmp, \
            (qemu_boards(args.boards_per_kind) if args.qemu else contextlib.nullcontext()) as boards:
        for name in names:
            rows.append(bench_model(name, args, Path(tmp), boards))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
