"""Poisoning on a simulated fleet (issue 18): each robust aggregation rule against plain FTTE weighting.

One study (har_cnn, 500 straggling boards, the ``tinyfed simulate`` defaults, seed 0) and, in this
one process, one FTTE run per (attack, rule): no attack (the clean runs), a fraction of the boards
(20% by default, drawn from the seed, the same boards in every run) sending sign-flipped updates,
and the same boards sending updates scaled by a factor. Every run has the same fleet, data split,
seed, starting head, training and budget (simulated seconds); only the rule and the attack change.
Prints one table: final accuracy on the whole test split and the mean of the last tenth's
evaluations, per rule and attack, and the gap to the clean plain-FTTE run.

Run: ``PYTHONPATH=. .venv/bin/python bench/robust.py [--clients 500] [--attackers 0.2] [--scale 50]
[--sim-seconds 600]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _study import ftte_study, load

from tinyfed.host.config import StrategyParams
from tinyfed.host.simulator import Attack, SimLimits, Simulation
from tinyfed.host.strategies import build_variant


def rules(trims: list[float], quantile: float) -> list[tuple[str, dict[str, float | str]]]:
    """(label, [strategy_params] overrides) of every rule compared."""
    out: list[tuple[str, dict[str, float | str]]] = [("plain FTTE", {"robust": "none"}),
                                                     (f"norm-quantile q={quantile:g}",
                                                      {"robust": "norm-quantile", "robust_quantile": quantile}),
                                                     ("median", {"robust": "median"})]
    out += [(f"trimmed-mean beta={b:g}", {"robust": "trimmed-mean", "trim_fraction": b}) for b in trims]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="har_cnn")
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--attackers", type=float, default=0.2, help="fraction of the boards that attack")
    ap.add_argument("--scale", type=float, default=50.0, help="factor of the scaled attack")
    ap.add_argument("--trims", default="0.2,0.3", help="trim fractions of trimmed-mean, comma-separated")
    ap.add_argument("--quantile", type=float, default=0.5, help="q of norm-quantile")
    ap.add_argument("--sim-seconds", type=float, default=600.0, help="the budget of every run, simulated seconds")
    ap.add_argument("--evaluate-every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    started = time.monotonic()
    cfg, study, model = ftte_study(args.model, args.clients, args.seed, target_accuracy=None, stop_at_target=False,
                                   max_versions=None)
    print(f"every run to {args.sim_seconds:g} simulated s, evaluated every {args.evaluate_every} versions; "
          f"attackers {args.attackers:g} of the boards ({round(args.attackers * args.clients)})")
    attacks = [("clean", "none"), ("sign-flip", "sign-flip"), (f"scaled x{args.scale:g}", f"scale:{args.scale:g}")]
    compared = rules([float(b) for b in args.trims.split(",") if b], args.quantile)
    table: dict[tuple[str, str], tuple[float, float, int, float]] = {}
    for attack_name, spec in attacks:
        attack = Attack.parse(spec, args.attackers)
        for rule_name, overrides in compared:
            params = StrategyParams(**{**cfg.strategy_params.model_dump(), **overrides})
            strategy = build_variant("ftte", fleet_size=cfg.clients, **params.model_dump())
            sim = Simulation(model, study.fleet, strategy, training=cfg.training.local_training(),
                             limits=SimLimits(None, False, None, args.sim_seconds), seed=cfg.seed,
                             norm_bound=cfg.checks.norm_bound, max_staleness=cfg.checks.max_staleness,
                             availability=study.availability, evaluate_every=args.evaluate_every, attack=attack)
            t0 = time.monotonic()
            try:
                result = sim.run()
            finally:
                sim.close()
            history = [h["accuracy"] for h in sim.history]
            tail = history[-max(1, len(history) // 10):]
            table[attack_name, rule_name] = (result.final_accuracy, float(np.mean(tail)), result.versions,
                                             time.monotonic() - t0)
            print(f"  {attack_name:>12} | {rule_name:<22} | final {result.final_accuracy:.4f} | last-tenth mean "
                  f"{np.mean(tail):.4f} | {result.versions} versions | {time.monotonic() - t0:.1f} s wall", flush=True)
    clean = table["clean", "plain FTTE"][0]
    print(f"\n| rule | {' | '.join(a for a, _ in attacks)} |")
    print(f"| --- | {' | '.join('---:' for _ in attacks)} |")
    for rule_name, _ in compared:
        cells = []
        for attack_name, _ in attacks:
            final, tail_mean, _, _ = table[attack_name, rule_name]
            cells.append(f"{final:.4f} ({tail_mean:.4f}; {100 * (final - clean):+.1f})")
        print(f"| {rule_name} | {' | '.join(cells)} |")
    print(f"\ncells: final accuracy (mean of the last tenth's evaluations; points against clean plain FTTE "
          f"{clean:.4f}). Wall {time.monotonic() - started:.0f} s, {load()}")


if __name__ == "__main__":
    main()
