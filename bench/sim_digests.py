"""The simulator's event digests for a few seeds: run before and after a refactor of the round
loop, and the two listings must be equal line for line (event-for-event identical runs).

    python bench/sim_digests.py --seeds 0,1,2 --clients 100
"""

from __future__ import annotations

import argparse
import time

from tinyfed.host.config import StrategyParams
from tinyfed.host.simulator import StudyConfig, run_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--model", default="har_cnn")
    ap.add_argument("--max-versions", type=int, default=40)
    args = ap.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.monotonic()
        cfg = StudyConfig(model=args.model, clients=args.clients, seed=seed, max_versions=args.max_versions,
                          strategy_params=StrategyParams(clients_per_round=10), eval_samples=600, horizon="auto")
        _study, results = run_study(cfg)
        for name, r in results.items():
            print(f"seed {seed} {name:8s} versions {r.versions:4d} sim_s {r.sim_seconds:10.1f} "
                  f"acc {r.final_accuracy:.4f} digest {r.event_digest}", flush=True)
        print(f"# seed {seed}: {time.monotonic() - t0:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()
