"""Kernel paths side by side (issue 14): bit-exact on every path, instructions per MAC fast vs plain C.

For the zoo models (har_cnn whole and its nRF52840 frozen head, digits_cnn), the engine's kernel
test models and the field look-alikes of ``tests/field_models.py``:

- host: ``--host-inputs`` (2,000) seeded random int8 inputs through the C engine built for the host
  twice, plain C and the DSP kernels (tfmb_simd.h's portable intrinsics), against TFLite Micro;
- QEMU ``mps2-an386`` (the DSP build) and ``mps3-an547`` (the MVE build), booted once each under
  ``-icount shift=4``: ``--qemu-inputs`` (200) inputs with the image's optimised kernels and the
  same number with its plain-C reference kernels (KERNELS mode), against TFLite Micro;
- instructions per MAC of one inference (PROFILE), optimised and plain C on the same image, and
  the M55 (MVE) figure over the M4F (DSP) one.

The targets of issue 14 are printed beside the figures. ``--json`` also prints the rows as JSON.

Run: ``.venv/bin/python bench/kernels.py [--models resnet8,ds_cnn] [--host-inputs 2000]
[--qemu-inputs 200] [--no-qemu] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from field_models import FIELD_MODELS, build_field_model, qemu_fragment  # noqa: E402

from tinyfed.boards import get_board  # noqa: E402
from tinyfed.firmware_bridge.compile.blob import compile_blob  # noqa: E402
from tinyfed.host.profiling import op_macs  # noqa: E402
from tinyfed.models.tflite_graph import TfliteGraph  # noqa: E402
from tinyfed.models.tflm import TflmModel  # noqa: E402

ICOUNT_SHIFT = 4
#: board -> the optimised path its image carries
QEMU_PATHS = {"mps2-an386": "dsp", "mps3-an547": "mve"}
#: issue 14's targets on mps2-an386 (whole model, instructions per MAC); the M55 at most half of its M4F figure
TARGETS_M4F = {"resnet8": 1.5, "ds_cnn": 2.0, "mobilenet_vww": 2.0, "har_cnn[:5]": 1.5, "digits_cnn": 8.0}
#: har_cnn's frozen head on the nRF52840 plan (ops before the cut)
HAR_CUT = 5


def mismatches(got: np.ndarray, want: np.ndarray) -> int:
    n = want.shape[0]
    return int(np.count_nonzero(np.any(np.asarray(got).reshape(n, -1) != np.asarray(want).reshape(n, -1), axis=1)))


def random_inputs(tflite: bytes, n: int, seed: int) -> np.ndarray:
    g = TfliteGraph.from_bytes(tflite)
    shape = tuple(g.tensors[g.inputs[0]].shape[1:])
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *shape), dtype=np.int8)


def models(names: list[str]) -> Iterator[tuple[str, bytes]]:
    """(name, int8 .tflite) of every model the bench covers, in ``names``' order."""
    from engine_models import kernel_zoo_int8

    from tinyfed.models.zoo import get_zoo_model

    for name in names:
        if name == "har_cnn":
            yield name, get_zoo_model("har_cnn").int8_tflite()
        elif name == "har_cnn[:5]":
            head, _ = TfliteGraph.from_bytes(get_zoo_model("har_cnn").int8_tflite()).split(HAR_CUT)
            yield name, head
        elif name == "digits_cnn":
            yield name, get_zoo_model("digits_cnn").int8_tflite()
        elif name.startswith("kernel_zoo"):
            yield name, kernel_zoo_int8(per_channel=name.endswith("per_channel"))
        else:
            yield name, build_field_model(name).tflite


ALL_MODELS = ["har_cnn[:5]", "har_cnn", "digits_cnn", "kernel_zoo_per_channel", "kernel_zoo_per_tensor",
              *FIELD_MODELS]


def host_libs(work: Path) -> dict[str, Any]:
    from test_engine import build_engine_lib

    return {path: build_engine_lib(work / f"libtfmb_{path}.so", path) for path in ("c", "dsp")}


def host_row(libs: dict[str, Any], tflite: bytes, want: np.ndarray, x: np.ndarray) -> dict[str, int]:
    from test_engine import c_run

    blob = compile_blob(tflite)
    return {f"host_{path}": mismatches(c_run(lib, blob, x), want) for path, lib in libs.items()}


class QemuBoard:
    """One booted board of a kind, its client, and what it measures."""

    def __init__(self, stack: ExitStack, name: str) -> None:
        from tinyfed.firmware_bridge.emulate.build import build_firmware
        from tinyfed.firmware_bridge.emulate.emulator import launch_qemu
        from tinyfed.firmware_bridge.link.client import BoardClient

        self.name = name
        board = get_board(name)
        elf = build_firmware(name)
        self.flash_text = _text_bytes(elf)
        emu = stack.enter_context(launch_qemu(board, elf, extra_args=("-icount", f"shift={ICOUNT_SHIFT}")))
        self.client = stack.enter_context(BoardClient(emu.url, name=name, timeout=600.0))
        self.slot_bytes = int(self.client.hello().fragment_slot_bytes)
        self.path = self.client.kernels().path

    def run(self, tflite: bytes, x: np.ndarray, want: np.ndarray) -> dict[str, Any]:
        """Mismatches on ``x`` with each path of the image, and instructions per MAC (PROFILE) of each."""
        names, macs = op_macs(tflite)
        blob = compile_blob(tflite)
        self.client.load_fragment(blob)
        row: dict[str, Any] = {}
        for path in ("fast", "reference"):
            reference = path == "reference"
            self.client.kernels(reference=reference)
            got = np.stack([self.client.infer(x[i : i + 1]) for i in range(len(x))])
            key = "plain" if reference else self.path
            row[f"{self.name}_{key}_mismatches"] = mismatches(got, want)
            prof = self.client.profile(x[:1], reference=reference)
            insn = prof.cycles * 1e9 / prof.clock_hz / 2**ICOUNT_SHIFT
            row[f"{self.name}_{key}_ipm"] = round(insn / sum(macs), 3) if sum(macs) else None
            row[f"{self.name}_{key}_by_op"] = _by_op(names, macs, [op.cycles * 1e9 / prof.clock_hz / 2**ICOUNT_SHIFT
                                                                    for op in prof.ops])
        self.client.kernels(reference=False)
        return row


def _by_op(names: list[str], macs: list[int], insn: list[float]) -> dict[str, dict[str, float]]:
    """Instructions and MACs summed per op type."""
    out: dict[str, dict[str, float]] = {}
    for n, m, i in zip(names, macs, insn, strict=True):
        d = out.setdefault(n, {"macs": 0, "instructions": 0.0})
        d["macs"] += m
        d["instructions"] += i
    return out


def _text_bytes(elf: Path) -> int:
    import subprocess

    out = subprocess.run(["arm-none-eabi-size", str(elf)], capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[1].split()[0])


def attempt(row: dict[str, Any], fn: Callable[[], dict[str, Any]], what: str) -> None:
    try:
        row.update(fn())
    except Exception as exc:  # noqa: BLE001 - a bench reports a failure and goes on
        row[f"{what}_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:150]}"


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_table(rows: list[dict[str, Any]]) -> None:
    print("\n| model | MACs | host C | host DSP | an386 DSP | an386 plain | an547 MVE | an547 plain |"
          " M4F insn/MAC DSP (plain) | M55 insn/MAC MVE (plain) | M55/M4F | M4F target |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        m4, m55 = r.get("mps2-an386_dsp_ipm"), r.get("mps3-an547_mve_ipm")
        ratio = m55 / m4 if isinstance(m4, float) and isinstance(m55, float) and m4 else None
        cells = [r["model"], f"{r['macs']:,}", _fmt(r.get("host_c")), _fmt(r.get("host_dsp")),
                 _fmt(r.get("mps2-an386_dsp_mismatches")), _fmt(r.get("mps2-an386_plain_mismatches")),
                 _fmt(r.get("mps3-an547_mve_mismatches")), _fmt(r.get("mps3-an547_plain_mismatches")),
                 f"{_fmt(m4)} ({_fmt(r.get('mps2-an386_plain_ipm'))})",
                 f"{_fmt(m55)} ({_fmt(r.get('mps3-an547_plain_ipm'))})", _fmt(ratio),
                 _fmt(TARGETS_M4F.get(r["model"]), 1)]
        print("| " + " | ".join(cells) + " |")
    errors = [(r["model"], k, v) for r in rows for k, v in r.items() if k.endswith("_error")]
    for model, k, v in errors:
        print(f"error: {model} {k}: {v}")


def print_by_op(rows: list[dict[str, Any]]) -> None:
    """Per op type, over every model: instructions per MAC (or per model, instructions) fast vs plain."""
    print("\n| board | op | MACs | insn/MAC optimised | insn/MAC plain C | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for board, path in QEMU_PATHS.items():
        tot: dict[str, list[float]] = {}
        for r in rows:
            fast, plain = r.get(f"{board}_{path}_by_op"), r.get(f"{board}_plain_by_op")
            if not fast or not plain:
                continue
            for op, d in fast.items():
                t = tot.setdefault(op, [0.0, 0.0, 0.0])
                t[0] += d["macs"]
                t[1] += d["instructions"]
                t[2] += plain[op]["instructions"]
        for op, (m, fi, pi) in sorted(tot.items(), key=lambda kv: -kv[1][2]):
            f_cell, p_cell = (f"{fi / m:.2f}", f"{pi / m:.2f}") if m else (f"{fi:,.0f} insn", f"{pi:,.0f} insn")
            print(f"| {board} | {op} | {int(m):,} | {f_cell} | {p_cell} | {pi / fi:.1f}x |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated model names")
    p.add_argument("--host-inputs", type=int, default=2000)
    p.add_argument("--qemu-inputs", type=int, default=200)
    p.add_argument("--no-qemu", dest="qemu", action="store_false")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tinyfed-kernels-") as tmp, ExitStack() as stack:
        libs = host_libs(Path(tmp))
        boards = [QemuBoard(stack, b) for b in QEMU_PATHS] if args.qemu else []
        for b in boards:
            print(f"{b.name}: kernel path {b.path}, firmware text {b.flash_text:,} B", flush=True)
        for name, tflite in models(names):
            row = bench_model(name, tflite, libs, boards, args)
            rows.append(row)
            print(f"{name}: {json.dumps({k: v for k, v in row.items() if not k.endswith('_by_op')})}", flush=True)
    print_table(rows)
    if args.qemu:
        print_by_op(rows)
    print(f"\n{time.monotonic() - t0:.0f} s")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


def bench_model(name: str, tflite: bytes, libs: dict[str, Any], boards: list[QemuBoard],
                args: argparse.Namespace) -> dict[str, Any]:
    """One model's row: host mismatches per path, and per QEMU board both paths' mismatches and figures."""
    row: dict[str, Any] = {"model": name, "macs": sum(op_macs(tflite)[1])}
    x = random_inputs(tflite, max(args.host_inputs, args.qemu_inputs), seed=14)
    want = np.asarray(TflmModel(tflite).run(x))
    n = args.host_inputs
    attempt(row, lambda: host_row(libs, tflite, want[:n], x[:n]), "host")
    if not boards:
        return row
    frag = qemu_fragment(tflite, min(b.slot_bytes for b in boards))
    if frag is not tflite:  # the autoencoder: the longest head that fits the slot, as a plan freezes
        row["qemu_fragment"] = "head"
        x = random_inputs(frag, args.qemu_inputs, seed=15)
        want = np.asarray(TflmModel(frag).run(x))
    q = args.qemu_inputs
    with ThreadPoolExecutor(len(boards)) as pool:
        for part in pool.map(lambda b: _board_part(b, frag, x[:q], want[:q]), boards):
            row.update(part)
    return row


def _board_part(board: QemuBoard, tflite: bytes, x: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    row: dict[str, Any] = {}
    attempt(row, lambda: board.run(tflite, x, want), board.name)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
