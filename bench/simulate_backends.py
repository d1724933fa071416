"""Local against Ray backend on one simulated study: wall time, board-steps per second, same result.

    .venv/bin/python bench/simulate_backends.py                      # har_cnn, 500 clients, ftte + fedavg
    .venv/bin/python bench/simulate_backends.py --clients 500,2000,10000 --strategies ftte,fedbuff,fedavg
    .venv/bin/python bench/simulate_backends.py --clients 2000 --versions 20 --address HEAD:6379

Both backends run the same fleet, seed and strategy; the table prints each one's wall seconds and
board-steps per second side by side, the ratio, and whether the event digest and the final model
are identical (they must be: only wall time may change). With several fleet sizes, the rows
scale from the smallest to the largest; the driver's peak RSS is the process high-water mark so
far (TensorFlow's import of the planner included).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="har_cnn")
    ap.add_argument("--clients", default="500", help="fleet sizes, comma-separated")
    ap.add_argument("--stragglers", type=float, default=0.9)
    ap.add_argument("--strategies", default="ftte,fedavg")
    ap.add_argument("--versions", type=int, default=15, help="versions per run (no target: a fixed amount of work)")
    ap.add_argument("--eval-samples", type=int, default=300)
    ap.add_argument("--address", default=None, help="join this Ray cluster (default: local Ray)")
    args = ap.parse_args()

    import numpy as np

    from tinyfed.host.ray_backend import RayBackend
    from tinyfed.host.simulator import Study, StudyConfig

    sizes = [int(v) for v in args.clients.split(",")]
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    base = None
    t0 = time.monotonic()
    ray_backend = RayBackend(args.address)
    ray_start = time.monotonic() - t0
    import ray

    cpus = ray.cluster_resources().get("CPU")
    print(f"{args.model}, {args.stragglers:.0%} stragglers, {args.versions} versions; "
          f"Ray up in {ray_start:.1f} s with {cpus} CPUs; load {os.getloadavg()[0]:.1f}")
    print("| strategy | clients | board steps | trained: local / submitted to Ray | local wall s | ray wall s "
          "| local steps/s | ray steps/s | ray / local wall | identical | driver peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    try:
        for n in sizes:
            cfg = StudyConfig(model=args.model, clients=n, stragglers=args.stragglers, target_accuracy=None,
                              max_versions=args.versions, eval_samples=args.eval_samples, horizon=None)
            study = Study(cfg)
            if base is not None:
                study._models = base._models  # the same plan and frozen outputs: built once, outside the timings
            for name in names:
                study.model(cfg.strategy(name).payload)
            base = study
            for name in names:
                local = study.run(name)
                before = ray_backend.submitted
                remote = study.run(name, backend=ray_backend)
                submitted = ray_backend.submitted - before
                same = local.event_digest == remote.event_digest and np.array_equal(local.vector, remote.vector)
                print(f"| {name} | {n:,} | {local.board_steps:,} | {local.host_trainings:,} / "
                      f"{submitted:,} | {local.wall_seconds:.1f} | {remote.wall_seconds:.1f} "
                      f"| {local.board_steps / local.wall_seconds:,.0f} "
                      f"| {remote.board_steps / remote.wall_seconds:,.0f} "
                      f"| {remote.wall_seconds / local.wall_seconds:.2f} | {'yes' if same else 'NO'} "
                      f"| {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} |", flush=True)
    finally:
        ray_backend.close()
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
