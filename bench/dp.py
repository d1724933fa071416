"""Accuracy cost of on-device differential privacy (issue 18, docs/privacy.md) on a simulated fleet.

FTTE on har_cnn with 500 simulated straggling boards (the study's defaults: fresh head, natural
split, 90% stragglers), once without DP and once per epsilon target. For a target E at delta, every
board may take part at most ``--participations`` k times (the epsilon budget E stops it there), and
sigma is chosen so that k participations cost exactly E: the Gaussian noise multiplier z with
epsilon(z / sqrt(k), delta) = E (dp-accounting's exact analytic Gaussian), sigma = 2z (sensitivity
2C). The update-norm check of a DP run is set to ``expected_norm`` (1.2 C sqrt(1 + d sigma^2)),
which every honest noised update stays under. Each run goes to ``--max-versions`` or until no board
may train any more; the no-DP run gets the same version cap. Printed per run: sigma, C,
versions, the final accuracy on the whole test split, the best, the epsilon reached (the largest
over boards) and the host's wall time.

Run: ``.venv/bin/python bench/dp.py [--epsilons 1,3,8] [--participations 4] [--clips 0.005,0.02,0.1]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from importlib.metadata import version

from _study import ftte_study, load

from tinyfed.host.simulator import SimLimits, Simulation
from tinyfed.training.privacy import DPConfig, expected_norm


def sigma_for(epsilon: float, delta: float, participations: int) -> float:
    """The noise multiplier sigma (noise std / C) at which ``participations`` releases cost ``epsilon``."""
    from dp_accounting import gaussian_mechanism

    z_once = gaussian_mechanism.get_sigma_gaussian(epsilon, delta)  # one release of sensitivity 1
    return 2.0 * z_once * math.sqrt(participations)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--epsilons", default="1,3,8")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--participations", type=int, default=4, help="most tasks per board in a DP run")
    ap.add_argument("--clips", default="0.005,0.02,0.1",
                    help="C values tried at every epsilon (the median update norm at the start is ~0.19)")
    ap.add_argument("--max-versions", type=int, default=200)
    ap.add_argument("--evaluate-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)), check=False).stdout.strip()
    print(f"bench/dp.py: tinyfed {version('tinyfed') if _installed() else '(source tree)'} at {commit or '?'}, "
          f"dp-accounting "
          f"{version('dp-accounting')}, numpy {version('numpy')}; {load()}")
    cfg, study, model = ftte_study("har_cnn", args.clients, args.seed, max_versions=args.max_versions,
                                   stop_at_target=False)
    runs: list[tuple[str, DPConfig | None]] = [("no DP", None)]
    for e in (float(v) for v in args.epsilons.split(",")):
        sigma = sigma_for(e, args.delta, args.participations)
        for clip in (float(v) for v in args.clips.split(",")):
            runs.append((f"epsilon {e:g}", DPConfig(clip, sigma, args.delta, epsilon_budget=e * (1 + 1e-9))))
    plain: list[dict] = []
    print("| run | C | sigma | noise std per value | versions | board steps | final accuracy | best accuracy "
          "| epsilon reached (delta) | most tasks per board | stop | wall s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for name, dp in runs:
        training = dataclasses.replace(cfg.training.local_training(), dp=dp)
        sim = Simulation(model, study.fleet, cfg.strategy("ftte"), training=training,
                         limits=SimLimits(None, False, args.max_versions), seed=cfg.seed,
                         norm_bound=expected_norm(dp, model.size) if dp is not None else cfg.checks.norm_bound,
                         max_staleness=cfg.checks.max_staleness, evaluate_every=args.evaluate_every)
        res = sim.run()
        sim.close()
        if dp is None:
            plain = res.history
        most = sim.privacy.max_participations if sim.privacy is not None else "-"
        eps = f"{res.epsilon:.3f} ({res.delta:g})" if res.epsilon is not None else "-"
        print(f"| {name} | {dp.clip if dp else '-'} | {f'{dp.noise:.2f}' if dp else '-'} "
              f"| {f'{dp.noise * dp.clip:.3f}' if dp else '-'} | {res.versions} | {res.board_steps:,} "
              f"| {res.final_accuracy:.4f} | {res.best_accuracy:.4f} | {eps} | {most} | {res.stop_reason} "
              f"| {res.wall_seconds:.0f} |", flush=True)
    print("no DP at the DP runs' end (same versions), from its history: " + ", ".join(
        f"version {r['version']}: {r['accuracy']:.4f}" for r in plain if r["version"] in (0, 100, 110, 120, 200)))
    print(load())
    return 0


def _installed() -> bool:
    try:
        version("tinyfed")
    except Exception:  # noqa: BLE001 - run from the source tree
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
