"""FTTE vs FedBuff vs FedAvg on a simulated fleet of 500 straggling boards (issue 6), side by side.

Runs ``tinyfed.host.simulator`` on one fleet, data split and seed per study and prints, per
strategy: time to the target in simulated seconds, versions, final accuracy (whole test split),
on-device training memory, bytes per update and in total, the ratios to FedAvg, the wall time of
the study on this host and simulated board-steps per second. ``--scale`` adds FTTE's wall time and
peak traced memory from 500 to 10,000 clients. The load of the host is printed with the wall
times: on a shared 2-core machine they are inflated.

Run: ``.venv/bin/python bench/simulate.py [--model har_cnn] [--target 0.8] [--partition dirichlet]
[--scale 500,2000,10000]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc
from pathlib import Path

from study_options import add_fleet_options

from tinyfed.commands.simulate import format_table, parse_horizon, ratios, write_outputs
from tinyfed.host.decomposition import decomposition, format_decomposition
from tinyfed.host.simulator import SimLimits, Simulation, Study, StudyConfig, make_fleet


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} cores"


def study(cfg: StudyConfig, out: Path | None = None) -> Study:
    started = time.monotonic()
    s = Study(cfg)
    results = s.run_all()
    wall = time.monotonic() - started
    info = s.describe()
    print(f"\n## {cfg.model}: {info['fleet']}, slowdown {info['slowdown']}, {info['partition']} split"
          f"{' alpha ' + str(cfg.alpha) if info['partition'] == 'dirichlet' else ''}, "
          f"{info['samples_per_device']['mean']:.1f} samples per device, seed {cfg.seed}, "
          f"target {cfg.target_accuracy}, availability {info['availability']}")
    print(format_table(results, cfg.target_accuracy, s.horizon_s))
    print(format_decomposition(decomposition(results)))
    rat = ratios(results)
    if "ftte" in rat and "fedavg" in rat:
        x, f, b = rat["ftte"], results["ftte"], results.get("fedbuff")
        print(f"FTTE / FedAvg: time to target {x['time_to_target_s'] or float('nan'):.4f} (goal <= 0.19), "
              f"device memory {x['device_memory_bytes']:.4f} (goal <= 0.20), bytes per update "
              f"{x['bytes_per_update']:.4f} (goal <= 0.31), bytes total {x['bytes_total']:.4f}")
        if b is not None:
            where = f"at {s.horizon_s:,.0f} simulated s" if s.horizon_s is not None else "at each one's stop"
            print(f"final accuracy {where}: FTTE {f.final_accuracy:.4f} vs FedBuff {b.final_accuracy:.4f} "
                  f"(goal: FTTE >= FedBuff - 0.01)")
    steps = sum(r.board_steps for r in results.values())
    sim_wall = sum(r.wall_seconds for r in results.values())
    print(f"wall time of the study {wall:.1f} s (setup {wall - sim_wall:.1f} s), {steps} board steps, "
          + ", ".join(f"{n} {r.board_steps / r.wall_seconds:.1f} steps/s" for n, r in results.items())
          + f"; {load()}")
    if out is not None:
        for p in write_outputs(out, s, results, cfg.record()):
            print(f"wrote {p}")
    return s


def scale(base: Study, sizes: list[int], versions: int, strategies: tuple[str, ...]) -> None:
    """Each strategy on growing fleets (same data, devices share shards past the data's size): wall and peak memory.

    Traced memory covers what the fleet and the run allocate (the model and the cached features
    are built before); bytes/device is the fleet's own state, the shards' index arrays excluded;
    the RSS is the process's high-water mark so far (TensorFlow's import included)."""
    from tinyfed.host.simulator import Slowdown

    cfg = base.cfg
    print(f"\n## scaling: {versions} versions, {cfg.model}, stragglers {cfg.stragglers}")
    print("| strategy | clients | fleet build s | run wall s | sim s | board steps | steps/s | peak traced memory (MB) "
          "| bytes/device | process peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in strategies:
        for n in sizes:
            shards = base.data.shares(base.partition, min(n, len(base.data.y) // 8), cfg.alpha, cfg.seed)
            strategy = cfg.model_copy(update={"clients": n}).strategy(name)  # a label: fedbuff@subset works too
            model = base.model(strategy.payload)
            tracemalloc.start()
            t0 = time.monotonic()
            fleet = make_fleet(shards, n, base.mix, cfg.stragglers, Slowdown.parse(cfg.slowdown), cfg.seed)
            fleet_bytes = tracemalloc.get_traced_memory()[0]
            t1 = time.monotonic()
            sim = Simulation(model, fleet, strategy, training=cfg.training.local_training(),
                             limits=SimLimits(max_versions=versions), seed=cfg.seed,
                             max_staleness=cfg.checks.max_staleness)
            res = sim.run()
            sim.close()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"| {name} | {n:,} | {t1 - t0:.2f} | {res.wall_seconds:.1f} | {res.sim_seconds:,.0f} "
                  f"| {res.board_steps:,} | {res.board_steps / res.wall_seconds:.0f} | {peak / 1e6:.1f} "
                  f"| {fleet_bytes / n:.0f} | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} |",
                  flush=True)
    print(load())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fleet_options(ap, strategies="ftte,fedbuff,fedavg", eval_samples=0)
    ap.add_argument("--partition", default=None)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", default="", help="comma-separated fleet sizes for the scaling table")
    ap.add_argument("--scale-strategies", default="ftte,fedbuff,fedavg")
    ap.add_argument("--no-study", action="store_true", help="only the scaling table")
    ap.add_argument("--availability", default="always", help="always or PERIOD:FRACTION")
    ap.add_argument("--scale-versions", type=int, default=50)
    ap.add_argument("--horizon", default="auto",
                    help="final accuracies at this simulated time: auto (the latest stop / 0.9), none, or seconds")
    ap.add_argument("--out", type=Path, default=None, help="also write the CSV, JSON and PNG files here")
    args = ap.parse_args(argv)
    cfg = StudyConfig(model=args.model, clients=args.clients, stragglers=args.stragglers, partition=args.partition,
                      alpha=args.alpha, seed=args.seed, target_accuracy=args.target,
                      strategies=tuple(args.strategies.split(",")), max_versions=args.max_versions,
                      eval_samples=args.eval_samples or None, availability=args.availability,
                      horizon=parse_horizon(args.horizon))
    print(f"bench/simulate.py: {load()}")
    s = Study(cfg) if args.no_study else study(cfg, args.out)
    if args.scale:
        scale(s, [int(v) for v in args.scale.split(",")], args.scale_versions,
              tuple(args.scale_strategies.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
