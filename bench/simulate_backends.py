"""Local against Ray backend on one simulated study: wall time, board-steps per second, same result.

    .venv/bin/python bench/simulate_backends.py                      # har_cnn, 500 clients, ftte + fedavg
    .venv/bin/python bench/simulate_backends.py --clients 2000 --versions 20 --address HEAD:6379

Both backends run the same fleet, seed and strategy; the table prints each one's wall seconds and
board-steps per second side by side, the ratio, and whether the event digest and the final model
are identical (they must be: only wall time may change).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="har_cnn")
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--stragglers", type=float, default=0.9)
    ap.add_argument("--strategies", default="ftte,fedavg")
    ap.add_argument("--versions", type=int, default=15, help="versions per run (no target: a fixed amount of work)")
    ap.add_argument("--eval-samples", type=int, default=300)
    ap.add_argument("--address", default=None, help="join this Ray cluster (default: local Ray)")
    args = ap.parse_args()

    import numpy as np

    from tinyfed.host.ray_backend import RayBackend
    from tinyfed.host.simulator import Study, StudyConfig

    cfg = StudyConfig(model=args.model, clients=args.clients, stragglers=args.stragglers, target_accuracy=None,
                      max_versions=args.versions, eval_samples=args.eval_samples)
    study = Study(cfg)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for name in names:
        study.model("subset" if name == "ftte" else "dense")  # built once, outside the timings
    t0 = time.monotonic()
    ray_backend = RayBackend(args.address)
    ray_start = time.monotonic() - t0
    import ray

    cpus = ray.cluster_resources().get("CPU")
    print(f"{args.model}, {args.clients} clients, {args.stragglers:.0%} stragglers, {args.versions} versions; "
          f"Ray up in {ray_start:.1f} s with {cpus} CPUs; load {os.getloadavg()[0]:.1f}")
    print("| strategy | board steps | host trainings local / ray | local wall s | ray wall s | local steps/s "
          "| ray steps/s | ray / local wall | identical |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    try:
        for name in names:
            local = study.run(name)
            remote = study.run(name, backend=ray_backend)
            same = local.event_digest == remote.event_digest and np.array_equal(local.vector, remote.vector)
            print(f"| {name} | {local.board_steps:,} | {local.host_trainings:,} / {remote.host_trainings:,} "
                  f"| {local.wall_seconds:.1f} | {remote.wall_seconds:.1f} "
                  f"| {local.board_steps / local.wall_seconds:,.0f} | {remote.board_steps / remote.wall_seconds:,.0f} "
                  f"| {remote.wall_seconds / local.wall_seconds:.2f} | {'yes' if same else 'NO'} |")
    finally:
        ray_backend.close()


if __name__ == "__main__":
    main()
