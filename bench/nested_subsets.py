"""Nested subsets on the default mixed fleet (issue 15, part D): end accuracy against whole-model FedBuff
while the smallest board's training memory stays at most a given share of whole-model training.

One study (har_cnn, 500 clients nrf52840:0.5, apollo3:0.3, stm32l4r9:0.2, 90% stragglers, natural
split, fresh head), the common core capped at ``--core-budget`` of whole-model training memory.
Runs, each to the same horizon in simulated seconds:

- ``ftte-nested``: FTTE, every board class training its superset of the core (``nested_subsets``);
- ``fedbuff-nested``: FedBuff's weighting (n / sqrt(1 + tau)) on the same nested subsets;
- ``ftte-core``: FTTE with every board on the capped core (what the smallest board alone allows);
- ``fedbuff-dense``: FedBuff on the whole model in float32 (the baseline the goal names).

``--refresh R[,R2...]`` adds, for each R, ``fedbuff-nested-rR`` (and ``ftte-nested-rR`` with
``--refresh-ftte``): the same nested run with every class's frozen fragment and tail re-cut from
the global vector every R versions and sent again (``nested_refresh_versions``).

Prints time to target, final accuracy (whole test split), end mean (the last 10% of the horizon),
the smallest board's training memory and its ratio to whole-model training, and per-class sizes.

``--against DIR`` takes the horizon from the fair study kept for the same seed and split
(``bench/fair_study.py --out DIR`` keeps one in ``DIR/studies/``) and prints the nested runs beside
that study's whole-model FedBuff, FedBuff on w* and FTTE, measured at the same horizon.

Run: ``.venv/bin/python bench/nested_subsets.py [--seed 0] [--partition iid] [--core-budget 0.1]
[--horizon 8300 | --against build/fair] [--eval-samples 2000] [--refresh 25,100] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tinyfed.host.simulator import SimResult, Simulation, Study, StudyConfig
from tinyfed.host.strategies import FTTE, FedBuff, FedBuffParams, Strategy


def run(study: Study, label: str, strategy: Strategy, payload: str, horizon: float,
        refresh: int | None = None, trace: Path | None = None) -> tuple[SimResult, dict]:
    """One strategy on the study's fleet to its target, then on to the horizon (as ``Study.run_all`` does);
    ``trace``: append each evaluation there as it is made (a long run's curve before it ends)."""
    from tinyfed.host.simulator import horizon_grid

    cfg = study.cfg

    def progress(row: dict) -> None:
        if trace is not None:
            with trace.open("a") as f:
                f.write(json.dumps({"run": label, **row}) + "\n")
    sim = Simulation(study.model(payload), study.fleet, strategy, training=cfg.training.local_training(),
                     limits=cfg.limits(), seed=cfg.seed, norm_bound=cfg.checks.norm_bound,
                     max_staleness=cfg.checks.max_staleness, evaluate_every=cfg.evaluation.every_versions,
                     nested_refresh_versions=refresh, progress=progress)
    started = time.monotonic()
    try:
        sim.run()
        sim.eval_grid = horizon_grid(horizon)
        result = sim.run(cfg.horizon_limits(horizon))
    finally:
        sim.close()
    print(f"{label}: {result.versions} versions, final {result.final_accuracy:.4f}, end mean "
          f"{result.end_accuracy_mean:.4f}, to target {result.time_to_target_s}, "
          f"{time.monotonic() - started:.0f} s wall",
          flush=True)
    extra = {"refresh_versions": refresh, "refreshes": sim.refreshes, "refresh_wall_s": sim.refresh_wall_s,
             "refresh_bytes_down": sim.refresh_bytes_down, "refresh_bytes_up": sim.refresh_bytes_up,
             "class_generations": {b.name: int(g) for b, g in zip(sim.fleet.boards, sim._board_gen, strict=True)}}
    if refresh is not None:
        print(f"  {label}: {sim.refreshes} refreshes, {sim.refresh_wall_s:.0f} s host, fragments/programs "
              f"{sim.refresh_bytes_down:,} B down + {sim.refresh_bytes_up:,} B up of {result.bytes_total:,} B in all; "
              f"class generations {extra['class_generations']}", flush=True)
    model = study.model(payload)
    for board, m in (model.classes or {}).items():
        # the final model as a board of this class sees it: its own values trained, everything else
        # of the global vector at the start (its frozen fragment and tail constants were never re-sent)
        view = model.w0.copy()
        view[m.index] = result.vector[m.index]
        print(f"  {label}, the {board} class's view of the final model: accuracy {model.evaluate_full(view)[0]:.4f}",
              flush=True)
    return result, extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--core-budget", type=float, default=0.1, help="0: no cap (the smallest board sets the core)")
    ap.add_argument("--horizon", type=float, default=8300.0)
    ap.add_argument("--against", type=Path,
                    help="a fair study's --out: its horizon for this seed and split, its runs printed beside")
    ap.add_argument("--eval-samples", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--only", default="ftte-nested,fedbuff-nested,ftte-core,fedbuff-dense")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--trace", type=Path, help="append every evaluation here as JSON lines, as it is made")
    ap.add_argument("--mix", default=None, help="board mix (default: the study's)")
    ap.add_argument("--partition", default=None,
                    help="data split: natural (default), iid or dirichlet (whether the extras' data coverage matters)")
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration with --partition dirichlet")
    ap.add_argument("--refresh", default="", help="comma-separated R: nested runs re-provisioned every R versions")
    ap.add_argument("--refresh-ftte", action="store_true", help="also FTTE's weighting with each --refresh R")
    args = ap.parse_args()
    fair = None
    if args.against:
        split = args.partition or "natural"
        if split == "dirichlet":
            split = f"dirichlet-{args.alpha:g}"
        path = args.against / "studies" / f"{split}_seed{args.seed}.json"
        fair = json.loads(path.read_text())
        args.horizon = float(fair["horizon_s"])
        if fair["config"]["eval_samples"] != args.eval_samples:
            print(f"note: {path} evaluated on {fair['config']['eval_samples']} test samples, these runs on "
                  f"{args.eval_samples}")
    cfg = StudyConfig(seed=args.seed, clients=args.clients, eval_samples=args.eval_samples, nested_subsets=True,
                      core_budget=args.core_budget if args.core_budget > 0 else None, horizon=args.horizon,
                      **({"board_mix": args.mix} if args.mix else {}),
                      **({"partition": args.partition, "alpha": args.alpha} if args.partition else {}))
    study = Study(cfg)
    whole = study.subset_plan().full_training.total  # whole-model training memory, the dense payload's
    nested_buff = FedBuff(FedBuffParams(payload="subset"), fleet_size=cfg.clients)  # FedBuff's weighting, nested
    runs: dict[str, tuple[Strategy, str, int | None]] = {
        "ftte-nested": (FTTE(fleet_size=cfg.clients), "nested", None),
        "fedbuff-nested": (nested_buff, "nested", None),
        "ftte-core": (FTTE(fleet_size=cfg.clients), "subset", None),
        "fedbuff-dense": (FedBuff(fleet_size=cfg.clients), "dense", None)}
    runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
    for r in (int(x) for x in args.refresh.split(",") if x):
        runs[f"fedbuff-nested-r{r}"] = (FedBuff(FedBuffParams(payload="subset"), fleet_size=cfg.clients), "nested", r)
        if args.refresh_ftte:
            runs[f"ftte-nested-r{r}"] = (FTTE(fleet_size=cfg.clients), "nested", r)
    out = {label: run(study, label, s, p, args.horizon, r, args.trace) for label, (s, p, r) in runs.items()}
    results = {label: res for label, (res, _) in out.items()}
    print(f"\nseed {args.seed}, split {study.partition}, core budget {args.core_budget} of whole-model training "
          f"({whole:,} B), "
          f"horizon {args.horizon:g} s, eval on {args.eval_samples} test samples (final on all)")
    print("| run | time to 0.80 (s) | final acc | end mean | smallest board's training memory (B) | ratio "
          "| versions | bytes total | refresh bytes (down+up) | refresh host s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        ttt = f"{r.time_to_target_s:,.1f}" if r.time_to_target_s is not None else "-"
        x = out[label][1]
        print(f"| {label} | {ttt} | {r.final_accuracy:.4f} | {r.end_accuracy_mean:.4f} | {r.device_memory_bytes:,} | "
              f"{r.device_memory_bytes / whole:.3f} | {r.versions} | {r.bytes_total:,} | "
              f"{x['refresh_bytes_down'] + x['refresh_bytes_up']:,} | {x['refresh_wall_s']:.0f} |")
    if fair is not None:
        for label in ("fedbuff", "fedbuff@subset", "ftte"):
            r = fair["results"][label]
            ttt = f"{r['time_to_target_s']:,.1f}" if r["reached_target"] else "-"
            memory = r["device_memory_bytes"]
            print(f"| {label} (fair study) | {ttt} | {r['final_accuracy']:.4f} | {r['end_accuracy_mean']:.4f} | "
                  f"{memory:,} | {memory / whole:.3f} | {r['versions']} | - | - | - |")
    nested = study.model("nested")
    assert nested.classes is not None
    for board, m in nested.classes.items():
        print(f"class {board}: {m.size:,} values, training memory {m.device_memory_bytes:,} B "
              f"({m.device_memory_bytes / whole:.3f}), update {m.update_bytes:,} B")
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "split": study.partition,
                                         "alpha": cfg.alpha if study.partition == "dirichlet" else None,
                                         "fair": None if fair is None else {
                                             k: fair["results"][k] for k in ("fedbuff", "fedbuff@subset", "ftte")},
                                         "core_budget": args.core_budget, "horizon": args.horizon,
                                         "whole_model_memory": whole,
                                         "runs": {k: {**r.to_dict(), "end_accuracy_mean": r.end_accuracy_mean,
                                                      **out[k][1]}
                                                  for k, r in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
