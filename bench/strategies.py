"""FTTE, FedBuff and FedAvg side by side on one fleet of simulated boards (issue 5).

Runs `tinyfed run` three times on the same model, devices, data shards and seed, and prints per
strategy: versions, wall time, final and best test accuracy (float master and the deployable int8
model), time to the target, updates, and bytes up/down per accepted update. The sim:// boards run
the firmware's step in numpy (int8 head bit-exact, same update format), so bytes are the real
protocol's; wall time is this host's, not a board's.

Run: ``.venv/bin/python bench/strategies.py [--model digits_cnn] [--devices 8] [--versions 12]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tinyfed.host.events import read_events, summarize


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--versions", type=int, default=12)
    ap.add_argument("--target", type=float, default=0.945)
    ap.add_argument("--partition", default="iid")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tinyfed-strategies-"))
    rows = []
    for strategy in ("ftte", "fedbuff", "fedavg"):
        cfg = root / f"{strategy}.toml"
        cfg.write_text(
            f'model = "{args.model}"\nstrategy = "{strategy}"\ntarget_accuracy = 0.999\nseed = 1\n'
            f'[data]\npartition = "{args.partition}"\n[training]\nepochs = 2\nlr = 0.01\n'
            f'[strategy_params]\nbuffer_size = 4\nclients_per_round = {args.devices}\n'
            f'[limits]\nmax_versions = {args.versions}\n')
        out = root / strategy
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", "run", "--simulate", str(args.devices), "--config",
                               str(cfg), "--out", str(out), "--json"], capture_output=True, text=True, env=env,
                              check=False)
        if proc.returncode != 0:
            print(f"{strategy}: failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        s = json.loads(proc.stdout.strip().splitlines()[-1])
        events = list(read_events(out))
        summ = summarize(events, args.target)
        int8 = [e["int8_accuracy"] for e in events if e["kind"] == "evaluation" and "int8_accuracy" in e]
        per_up = s["bytes_up"] / max(1, s["updates_accepted"])
        rows.append((strategy, s["versions"], s["wall_seconds"], s["final_accuracy"], summ["best_accuracy"],
                     max(int8) if int8 else float("nan"), summ.get("time_to_target"), s["updates_accepted"], per_up,
                     s["bytes_down"] / max(1, s["updates_accepted"])))
    print(f"{args.model}, {args.devices} sim:// boards ({args.partition}), {args.versions} versions, "
          f"target {args.target}:")
    print("| strategy | versions | wall s | final acc | best acc | best int8 acc | time to target (s) | updates "
          "| bytes up / update | bytes down / update |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ttt = "-" if r[6] is None else f"{r[6]:.1f}"
        print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.4f} | {ttt} | {r[7]} | "
              f"{r[8]:,.0f} | {r[9]:,.0f} |")
    base = {r[0]: r for r in rows}
    if "ftte" in base and "fedavg" in base:
        print(f"FTTE upload per update / FedAvg's: {base['ftte'][8] / base['fedavg'][8]:.4f} (goal <= 0.31)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
