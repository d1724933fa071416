"""FTTE, FedBuff and FedAvg side by side on one fleet (issue 5).

Runs `tinyfed run` three times on the same model, devices, data shards and seed and prints one
row per strategy.

- Default: simulated boards (``sim://``, the firmware's step in numpy: int8 head bit-exact, the
  same update format), so bytes are the real protocol's and wall time is this host's.
- ``--emulate``: QEMU boards, as the paper runs the baselines: har_cnn from the ``fresh-head``
  start (the classifier head re-initialised with seeded Glorot values, the same start for all
  three), FTTE on ``mps2-an386`` (the nrf52840's budget), FedBuff and FedAvg training every
  layer in float32. Their state does not fit that budget, so `tinyfed run` boots the board's
  emulator-only baseline profile (``mps2-an386-large``) for them and says so; the table's
  ``boards`` column shows which profile ran. Wall time is this host's and includes booting and
  provisioning the boards (QEMU's UART moves ~35-50 KB/s, so the 255 KB whole-model program
  takes seconds per board).

Run: ``.venv/bin/python bench/strategies.py [--model digits_cnn] [--devices 8] [--versions 12]``
or ``.venv/bin/python bench/strategies.py --emulate [--devices 8] [--max-windows 32] [--versions 4]``
(emulated defaults: 32 windows per board, 2 epochs, lr 0.03, target 0.5, as the CI test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tinyfed.host.events import read_events, summarize

STRATEGIES = ("ftte", "fedbuff", "fedavg")


def _run(strategy: str, args: argparse.Namespace, root: Path) -> dict[str, Any] | None:
    """One `tinyfed run --json`; its summary plus what the event log says about time and accuracy."""
    cfg = root / f"{strategy}.toml"
    start = 'start = "fresh-head"\n' if args.emulate else ""
    limits = f"max_versions = {args.versions}\n" + (f"max_seconds = {args.max_seconds}\n" if args.max_seconds else "")
    # the emulated comparison stops at the target (time to target is the point); the simulated one runs all versions
    target = args.target if args.emulate else 0.999
    cfg.write_text(
        f'model = "{args.model}"\nstrategy = "{strategy}"\ntarget_accuracy = {target}\nseed = {args.seed}\n{start}'
        f'[data]\npartition = "{args.partition}"\n[training]\nepochs = {args.epochs}\nlr = {args.lr}\n'
        f'[strategy_params]\nbuffer_size = {args.buffer_size}\nclients_per_round = {args.devices}\n'
        f'[limits]\n{limits}')
    out = root / strategy
    if args.emulate:
        fleet = ["--emulate", str(args.devices), "--board", args.board]
    else:
        fleet = ["--simulate", str(args.devices)]
    cmd = [sys.executable, "-m", "tinyfed.cli", "run", *fleet, "--config", str(cfg), "--out", str(out), "--json"]
    if args.max_windows:
        cmd += ["--max-windows", str(args.max_windows)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        print(f"{strategy}: failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    events = list(read_events(out))
    summ = summarize(events, args.target)
    int8 = [e["int8_accuracy"] for e in events if e["kind"] == "evaluation" and "int8_accuracy" in e]
    first = next((e["t"] for e in events if e["kind"] == "dispatch"), None)
    steps = [e["t"] for e in events if e["kind"] == "aggregation"]
    s.update(best_accuracy=summ["best_accuracy"], best_int8=max(int8) if int8 else float("nan"),
             time_to_target=summ.get("time_to_target"), startup_s=first,
             s_per_version=(steps[-1] - first) / len(steps) if steps and first is not None else None,
             up_per_update=s["bytes_up"] / max(1, s["updates_accepted"]),
             down_per_update=s["bytes_down"] / max(1, s["updates_accepted"]))
    return s


def _print_simulated(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"{args.model}, {args.devices} sim:// boards ({args.partition}), {args.versions} versions, "
          f"target {args.target}:")
    print("| strategy | versions | wall s | final acc | best acc | best int8 acc | time to target (s) | updates "
          "| bytes up / update | bytes down / update |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        ttt = "-" if r["time_to_target"] is None else f"{r['time_to_target']:.1f}"
        print(f"| {name} | {r['versions']} | {r['wall_seconds']:.1f} | {r['final_accuracy']:.4f} | "
              f"{r['best_accuracy']:.4f} | {r['best_int8']:.4f} | {ttt} | {r['updates_accepted']} | "
              f"{r['up_per_update']:,.0f} | {r['down_per_update']:,.0f} |")


def _print_emulated(rows: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"{args.model} (fresh-head start), {args.devices} QEMU boards (--board {args.board}), "
          f"{args.max_windows or 'all'} windows per board, {args.epochs} epoch(s), target {args.target}, "
          f"at most {args.versions} versions:")
    print("| strategy | boards | time to target (wall s) | versions | startup s | s / version | final acc | "
          "final int8 acc | bytes up / update | bytes up | bytes down | up / update vs FedAvg |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    fedavg = rows.get("fedavg", {}).get("up_per_update")
    for name, r in rows.items():
        ttt = "not reached" if r["time_to_target"] is None else f"{r['time_to_target']:.1f}"
        spv = "-" if r["s_per_version"] is None else f"{r['s_per_version']:.1f}"
        ratio = f"{r['up_per_update'] / fedavg:.4f}" if fedavg else "-"
        print(f"| {name} | {r.get('baseline_board') or args.board} | {ttt} | {r['versions']} | {r['startup_s']:.1f} | "
              f"{spv} | {r['final_accuracy']:.4f} | {r['final_int8_accuracy']:.4f} | {r['up_per_update']:,.0f} | "
              f"{r['bytes_up']:,} | {r['bytes_down']:,} | {ratio} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emulate", action="store_true", help="QEMU boards, har_cnn from the fresh-head start")
    ap.add_argument("--model", default=None, help="default: digits_cnn (simulated), har_cnn (--emulate)")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--versions", type=int, default=None, help="most versions per strategy (12 simulated, 4 emulated)")
    ap.add_argument("--target", type=float, default=None, help="default: 0.945 (simulated), 0.5 (--emulate)")
    ap.add_argument("--partition", default=None, help="default: iid (simulated), natural (--emulate)")
    ap.add_argument("--board", default="mps2-an386", help="--emulate board profile (baselines may use its baseline)")
    ap.add_argument("--max-windows", type=int, default=None, help="cap each board's local windows (32 with --emulate)")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop each run after this many seconds")
    ap.add_argument("--epochs", type=int, default=None, help="local epochs (2)")
    ap.add_argument("--lr", type=float, default=None, help="device learning rate (0.01 simulated, 0.03 emulated)")
    ap.add_argument("--buffer-size", type=int, default=None, help="K (4 simulated, 10 emulated: the default)")
    ap.add_argument("--seed", type=int, default=None, help="run seed (1 simulated, 0 emulated)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset, in this order")
    args = ap.parse_args(argv)
    emu = args.emulate
    # --emulate: the settings of tests/test_strategies_qemu.py (one dense version costs ~50 s of a 2-core host)
    defaults = {"model": ("digits_cnn", "har_cnn"), "versions": (12, 4), "target": (0.945, 0.5),
                "partition": ("iid", "natural"), "max_windows": (None, 32), "epochs": (2, 2), "lr": (0.01, 0.03),
                "buffer_size": (4, 10), "seed": (1, 0)}
    for key, pair in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, pair[emu])
    root = Path(tempfile.mkdtemp(prefix="tinyfed-strategies-"))
    rows = {}
    for strategy in args.strategies.split(","):
        r = _run(strategy, args, root)
        if r is not None:
            rows[strategy] = r
    (_print_emulated if emu else _print_simulated)(rows, args)
    if "ftte" in rows and "fedavg" in rows:
        ratio = rows["ftte"]["up_per_update"] / rows["fedavg"]["up_per_update"]
        print(f"FTTE upload per update / FedAvg's: {ratio:.4f} (goal <= 0.31)")
    print(f"run directories: {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
