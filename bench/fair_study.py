"""Issue 15's fair table: FTTE, FedBuff and FedAvg on w* and on the whole model, over seeds x splits.

Each (seed, split) is one study (every variant on the same fleet to its target, then on to the
common horizon, the latest stop / 0.9); the studies run in ``--workers`` spawned processes. Prints
each study as it finishes (wall time and host load), then the summary: time to target, final and
end-mean accuracy (mean [min-max] over seeds), the time ratios to fedbuff@subset and
fedavg@subset+overselect, the headline's decomposition per split and issue 15's goals checked.

Run: ``.venv/bin/python bench/fair_study.py --seeds 0-4 --splits natural,iid,dirichlet:0.1,dirichlet:0.5
--eval-samples 1000 --out build/fair`` (the whole table; one study of the eight variants costs
several minutes of one core, see BENCHMARKS.md, "Read first", for measured times). ``--seeds 0 --workers 2``
gives a one-seed smoke over the four splits.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from study_options import add_fleet_options

from tinyfed.host.fair_study import (
    FAIR_SPLITS,
    FAIR_VARIANTS,
    format_summary,
    load,
    parse_seeds,
    parse_splits,
    run_fair_study,
    summarize,
    write_fair_outputs,
)
from tinyfed.host.simulator import StudyConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fleet_options(ap, strategies=",".join(FAIR_VARIANTS), eval_samples=1000)
    ap.add_argument("--seeds", default="0-4", help="LOW-HIGH or a comma list")
    ap.add_argument("--splits", default=",".join(FAIR_SPLITS), help="natural, iid, dirichlet:ALPHA, comma-separated")
    ap.add_argument("--max-sim-seconds", type=float, default=12000.0,
                    help="first-leg cap: a variant that has not reached the target by then counts as not reached "
                         "(FedAvg on a Dirichlet 0.1 split may never get there, and the horizon, its stop / 0.9, "
                         "sets every variant's cost)")
    ap.add_argument("--workers", type=int, default=2, help="studies run at once, each in its own process")
    ap.add_argument("--out", type=Path, default=None,
                    help="write fair_study.json, fair_runs.csv, fair_summary.csv; each study is kept in OUT/studies "
                         "as it finishes and reused by a rerun with the same config (stop and resume)")
    ap.add_argument("--kept-only", action="store_true",
                    help="summarise the studies already kept in OUT/studies and run none (a table in progress)")
    args = ap.parse_args(argv)
    base = StudyConfig(model=args.model, clients=args.clients, stragglers=args.stragglers, target_accuracy=args.target,
                       strategies=tuple(s for s in args.strategies.split(",") if s), max_versions=args.max_versions,
                       max_sim_seconds=args.max_sim_seconds, eval_samples=args.eval_samples or None)
    seeds, splits = parse_seeds(args.seeds), parse_splits(args.splits)
    print(f"bench/fair_study.py: {len(seeds)} seeds x {len(splits)} splits of {len(base.strategies)} variants, "
          f"{args.workers} workers; load {load()} on {os.cpu_count()} cores", flush=True)
    started = time.monotonic()

    def done(rec: dict[str, Any]) -> None:
        ttt = ", ".join(f"{k} {v['time_to_target_s']:,.0f}" if v["reached_target"] else f"{k} -"
                        for k, v in rec["results"].items())
        print(f"[{time.monotonic() - started:,.0f} s] {rec['split']} seed {rec['seed']}: horizon "
              f"{rec['horizon_s']:,.0f} s, {rec['wall_s']:,.0f} s wall ({rec['cpu_s']:,.0f} s CPU), "
              f"load {rec['load_before']} -> {rec['load_after']}; time to target {ttt}", flush=True)

    cache = None if args.out is None else args.out / "studies"
    records = run_fair_study(base, seeds, splits, workers=args.workers, done=done, cache=cache,
                             run_missing=not args.kept_only)
    if not records:
        print("no study to summarise (none kept in OUT/studies with this config)")
        return 1
    summary = summarize(records)
    print()
    print(format_summary(summary, args.target))
    walls = [r["wall_s"] for r in records]
    print(f"\nwall time {time.monotonic() - started:,.0f} s for {len(records)} studies (per study "
          f"{min(walls):,.0f}-{max(walls):,.0f} s, mean {sum(walls) / len(walls):,.0f} s; CPU per study "
          f"{sum(r['cpu_s'] for r in records) / len(records):,.0f} s); load {load()}")
    if args.out is not None:
        cfg = {**base.record(), "seeds": seeds, "splits": [str(s) for s in splits], "workers": args.workers}
        for p in write_fair_outputs(args.out, records, summary, cfg):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
