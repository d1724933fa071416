"""One simulated board's training step on this host: the old code path against the current one.

The fleet simulator spends almost all its time in ``tinyfed.host.simulator.train_step`` (local
SGD on a ``FloatTail`` in the firmware's sample order, then the int8 update image). This bench
times that step for FTTE's subset payload and the dense baselines' payload, with BLAS at one
thread, for:

* ``old``: the modules ``shuffle``, ``train_link``, ``training.tail`` and ``training.step`` as
  they were at ``--baseline`` (read with ``git show``, swapped in for the call), and
* ``new``: the working tree,

in one process, rounds interleaved so that the load of the shared host hits both alike. Every
step's result (delta bytes, loss, variance, wire bytes) is compared between the two: the speed-up
must not change a bit. Prints the median and the best round's time per step and the speed-up per
payload, then two of the pieces alone (the firmware sample order, the update quantization),
best of several repeats, their outputs compared too.

Run: ``.venv/bin/python bench/train_host.py [--baseline 25c42b2] [--rounds 7] [--devices 20]``
(the first run builds the study: ~1 minute). Only the ratios mean much on a loaded host.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
from threadpoolctl import threadpool_limits

from tinyfed.host.engine import LocalTraining
from tinyfed.host.simulator import SimModel, Study, StudyConfig, train_step

ROOT = Path(__file__).resolve().parents[1]
#: the last commit before the host-side training step was sped up
DEFAULT_BASELINE = "25c42b2"
#: module name -> file, in import order (step imports tail)
SWAPPED = {
    "tinyfed.firmware_bridge.twin.shuffle": "tinyfed/firmware_bridge/twin/shuffle.py",
    "tinyfed.firmware_bridge.link.train_link": "tinyfed/firmware_bridge/link/train_link.py",
    "tinyfed.training.tail": "tinyfed/training/tail.py",
    "tinyfed.training.step": "tinyfed/training/step.py",
}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} cores"


def baseline_modules(rev: str) -> dict[str, ModuleType]:
    """The modules of :data:`SWAPPED` as of ``rev``, imported under their own names while
    loading (so ``step`` binds the old ``tail``), then the current ones put back."""
    for name in SWAPPED:
        importlib.import_module(name)
    old: dict[str, ModuleType] = {}
    with tempfile.TemporaryDirectory() as tmp, swapped(old):
        for name, path in SWAPPED.items():
            src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                                 text=True).stdout
            file = Path(tmp) / f"{name.replace('.', '_')}.py"
            file.write_text(src)
            spec = importlib.util.spec_from_file_location(name, file)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
            old[name] = mod
    return old


@contextlib.contextmanager
def swapped(modules: dict[str, ModuleType]) -> Iterator[None]:
    """``sys.modules`` and the parent packages' attributes point at ``modules`` inside."""
    saved = {name: sys.modules[name] for name in SWAPPED}
    try:
        for name, mod in modules.items():
            sys.modules[name] = mod
            parent, _, leaf = name.rpartition(".")
            setattr(sys.modules[parent], leaf, mod)
        yield
    finally:
        for name, mod in saved.items():
            sys.modules[name] = mod
            parent, _, leaf = name.rpartition(".")
            setattr(sys.modules[parent], leaf, mod)


def run(model: SimModel, devices: list[np.ndarray], training: LocalTraining) -> tuple[float, list[tuple]]:
    """Seconds per step over ``devices`` (one task each) and every step's result."""
    out = []
    started = time.perf_counter()
    for k, idx in enumerate(devices):
        r = train_step(model, model.w0, idx, 1000 + k, 1, training, False)
        out.append((r.delta.tobytes(), r.n, r.loss, r.variance, r.wire_bytes))
    return (time.perf_counter() - started) / len(devices), out


def pieces(old: dict[str, ModuleType], study: Study) -> None:
    """epoch_order and quantize_flat alone, old against new (best of 5 repeats)."""
    import tinyfed.firmware_bridge.link.train_link as new_link
    import tinyfed.firmware_bridge.twin.shuffle as new_shuffle

    o_sh, o_ln = old["tinyfed.firmware_bridge.twin.shuffle"], old["tinyfed.firmware_bridge.link.train_link"]
    rng = np.random.default_rng(0)
    rows = []
    for n in (15, 300, 5000):
        args = (n, 123457, 0)
        rows.append((f"epoch_order n={n}", lambda f=o_sh.epoch_order, a=args: f(*a),
                     lambda f=new_shuffle.epoch_order, a=args: f(*a)))
    for payload in ("subset", "dense"):
        m = study.model(payload)
        delta = rng.normal(0, 1e-3, m.size).astype(np.float32)
        for pc in (False, True):
            args = (delta, m.unit_shapes, pc)
            rows.append((f"quantize_flat {payload}{' per-ch' if pc else ''}",
                         lambda f=o_ln.quantize_flat, a=args: f(*a), lambda f=new_link.quantize_flat, a=args: f(*a)))
    print(f"\n{'piece':<28} {'old us':>9} {'new us':>9} {'speed-up':>9}  identical")
    for name, f_old, f_new in rows:
        same = _same(f_old(), f_new())
        t_old, t_new = (min(timeit.repeat(f, number=20, repeat=5)) / 20 * 1e6 for f in (f_old, f_new))
        print(f"{name:<28} {t_old:>9.1f} {t_new:>9.1f} {t_old / t_new:>8.2f}x  {'yes' if same else 'NO'}")


def _same(a, b) -> bool:
    """Equal bit for bit: arrays by dtype and bytes, tuples element by element."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the old code path")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved old/new rounds (the median is printed)")
    ap.add_argument("--devices", type=int, default=20, help="devices (tasks) per round")
    args = ap.parse_args()

    started = time.monotonic()
    study = Study(StudyConfig())
    print(f"study ready in {time.monotonic() - started:.1f} s; {load()}")
    old = baseline_modules(args.baseline)
    training = LocalTraining()
    print(f"\none board's train_step, BLAS at 1 thread, {training.epochs} epoch, batch {training.batch_size}, "
          f"median of {args.rounds} rounds x {args.devices} devices; old = {args.baseline}, new = working tree")
    print(f"{'payload':<8} {'values':>7} {'samples':>8} {'old ms':>8} {'new ms':>8} {'speed-up':>9} "
          f"{'best old':>9} {'best new':>9} {'speed-up':>9}  identical")
    for payload in ("subset", "dense"):
        new_model = study.model(payload)
        old_tail = old["tinyfed.training.tail"].FloatTail(new_model.tail.graph, new_model.tail.units)
        old_model = replace(new_model, tail=old_tail)
        devices = [d.indices for d in study.fleet.devices[: args.devices]]
        times: dict[str, list[float]] = {"old": [], "new": []}
        same = True
        with threadpool_limits(limits=1, user_api="blas"):
            for _ in range(args.rounds):
                with swapped(old):
                    t_old, r_old = run(old_model, devices, training)
                t_new, r_new = run(new_model, devices, training)
                times["old"].append(t_old)
                times["new"].append(t_new)
                same &= r_old == r_new
        o, n = statistics.median(times["old"]) * 1e3, statistics.median(times["new"]) * 1e3
        bo, bn = min(times["old"]) * 1e3, min(times["new"]) * 1e3
        samples = statistics.mean(len(d) for d in devices)
        print(f"{payload:<8} {new_model.size:>7} {samples:>8.1f} {o:>8.2f} {n:>8.2f} {o / n:>8.2f}x "
              f"{bo:>9.2f} {bn:>9.2f} {bo / bn:>8.2f}x  {'yes' if same else 'NO'}")
    pieces(old, study)
    print(load())


if __name__ == "__main__":
    main()
