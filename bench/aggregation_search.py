"""Why FTTE's variance weight costs accuracy, and which weighting of the family earns its place (issue 15).

Two modes, both on the simulator's study fleet (har_cnn, 500 boards, 90% stragglers, K = 10):

- ``diagnose``: one run with today's FTTE weighting (gamma = 1); every buffered update's sample
  count, local loss, label skew of its device, staleness, board, delta norm, delta variance, cosine
  with the buffer's mean and the variance factor g it got is recorded, and the correlations and
  the share of the step each kind of update gets are printed.
- ``search``: each candidate weighting (a ``SearchFTTE``, FTTE with the weight given by a spec)
  on the same fleets, seeds and splits as ``fedbuff`` (= FTTE with gamma = 0, a = 0.5, FedBuff on
  w*): time to the target, final accuracy and time-weighted end mean at a common horizon.

Candidate specs (comma-free, ``+``-joined terms on top of n_i * (1 + tau_i)^-a):
``a=0.5`` staleness exponent; ``var=1`` today's min(1, median(var)/var)^gamma; ``varn=1`` the
same on var_i / n_i; ``rvar=1`` on var_i / (||delta_i||^2 / d) (the variance relative to the
update's own size: its spread, not its size); ``norm=1`` on ||delta_i||; ``gmin=0.5`` clips
the variance ratio to [gmin, 1]; ``cos=1`` max(0, cos(delta_i, buffer mean))^beta;
``loss=1`` (loss_i / median loss)^beta; ``lr=1.0`` the server step.

Run: ``PYTHONPATH=. .venv/bin/python bench/aggregation_search.py search --seeds 0,1,2,3,4
--splits natural,iid,dirichlet:0.1,dirichlet:0.5 --horizon 3000 --candidates fedbuff ftte rvar=1
--out results.json``; ``... search --out results.json --summary`` prints the table again (with
an ``all`` row per candidate pooling every split and seed when there are several splits);
``... diagnose --seed 0 --horizon 1500``. Results and their discussion: ``docs/strategies.md``,
"How FTTE's weighting was chosen".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed.host.simulator import SimLimits, Simulation, Study, StudyConfig, horizon_grid
from tinyfed.host.strategies.base import Aggregate, BufferedStrategy, sample_counts
from tinyfed.host.updates import Update

ALIASES = {"fedbuff": "a=0.5", "ftte": "a=0.5+var=1"}


def parse_spec(spec: str) -> dict[str, float]:
    """``"a=0.5+var=1"`` -> {"a": 0.5, "var": 1.0}; the aliases ``fedbuff`` and ``ftte`` expand."""
    spec = ALIASES.get(spec, spec)
    terms: dict[str, float] = {"a": 0.5}
    for term in spec.split("+"):
        key, _, value = term.partition("=")
        terms[key] = float(value)
    return terms


def ratio_factor(x: np.ndarray, exponent: float, gmin: float) -> np.ndarray:
    """min(1, median(x) / x_i) clipped below at gmin, to ``exponent``; x_i = 0 gives 1."""
    ratio = np.ones_like(x)
    pos = x > 0
    ratio[pos] = np.minimum(1.0, float(np.median(x)) / x[pos])
    return np.maximum(ratio, gmin) ** exponent


def candidate_weights(terms: dict[str, float], updates: list[Update], staleness: np.ndarray) -> np.ndarray:
    """The weight a spec gives each buffered update."""
    n = sample_counts(updates)
    w = n * (1.0 + staleness.astype(np.float64)) ** -terms.get("a", 0.5)
    var = np.array([u.variance for u in updates], dtype=np.float64)
    gmin = terms.get("gmin", 0.0)
    if terms.get("var"):
        w = w * ratio_factor(var, terms["var"], gmin)
    if terms.get("varn"):
        w = w * ratio_factor(var / n, terms["varn"], gmin)
    deltas = np.stack([u.delta.astype(np.float64) for u in updates])
    sq = (deltas**2).mean(axis=1)
    if terms.get("rvar"):
        w = w * ratio_factor(np.where(sq > 0, var / np.where(sq > 0, sq, 1.0), 0.0), terms["rvar"], gmin)
    if terms.get("norm"):
        w = w * ratio_factor(np.sqrt(sq), terms["norm"], gmin)
    if terms.get("cos"):
        mean = (w[:, None] * deltas).sum(axis=0) / w.sum()
        cos = deltas @ mean / np.maximum(np.linalg.norm(deltas, axis=1) * np.linalg.norm(mean), 1e-30)
        w = w * np.maximum(cos, 0.0) ** terms["cos"] + 1e-12
    if terms.get("loss"):
        loss = np.array([u.loss for u in updates], dtype=np.float64)
        w = w * (loss / max(float(np.median(loss)), 1e-12)) ** terms["loss"]
    return w


@dataclass(frozen=True)
class SearchParams:
    buffer_size: int = 10
    server_lr: float = 1.0
    concurrency: int | None = None  # every idle device trains, as FTTE's and FedBuff's defaults


class SearchFTTE(BufferedStrategy):
    """FTTE with a weighting given by a spec; optionally records every aggregation."""

    name = "ftte-search"
    payload = "subset"
    Params = SearchParams  # type: ignore[assignment]

    def __init__(self, spec: str, *, fleet_size: int, record: bool = False) -> None:
        self.spec, self.terms = spec, parse_spec(spec)
        super().__init__(SearchParams(server_lr=self.terms.get("lr", 1.0)), fleet_size=fleet_size)
        self.record = record
        self.log: list[Aggregate] = []
        self.step_norms: list[float] = []  # ||step|| of every aggregation (the effective step size)

    def weights(self, updates: list[Update], staleness: np.ndarray) -> np.ndarray:
        return candidate_weights(self.terms, updates, staleness)

    def _step(self, updates: list[Update], weights: np.ndarray, staleness: np.ndarray, version: int) -> Aggregate:
        agg = super()._step(updates, weights, staleness, version)
        self.step_norms.append(float(np.linalg.norm(agg.step.astype(np.float64))))
        if self.record:
            self.log.append(agg)
        return agg


def split_config(split: str) -> dict[str, Any]:
    if split.startswith("dirichlet"):
        return {"partition": "dirichlet", "alpha": float(split.split(":")[1])}
    return {"partition": split}


class Fleets:
    """One study per (seed, split); the subset model (the seeded fresh head, the plan, the frozen
    features) is built once per seed and shared by that seed's splits."""

    def __init__(self, eval_samples: int) -> None:
        self.eval_samples = eval_samples
        self.models: dict[int, Any] = {}

    def study(self, seed: int, split: str) -> Study:
        cfg = StudyConfig(seed=seed, eval_samples=self.eval_samples, strategies=("ftte",), **split_config(split))
        st = Study(cfg)
        if seed in self.models:
            st._models["subset"] = self.models[seed]
        else:
            self.models[seed] = st.model("subset")
        return st


def run_one(st: Study, strategy: SearchFTTE, horizon: float) -> dict[str, Any]:
    cfg = st.cfg
    sim = Simulation(st.model("subset"), st.fleet, strategy, training=cfg.training.local_training(),
                     limits=SimLimits(cfg.target_accuracy, True, None, horizon), seed=cfg.seed,
                     norm_bound=cfg.checks.norm_bound, max_staleness=cfg.checks.max_staleness)
    first = sim.run()
    sim.eval_grid = horizon_grid(horizon)
    res = sim.run(SimLimits(cfg.target_accuracy, False, None, horizon))
    sim.close()
    return {"time_to_target_s": first.time_to_target_s, "versions_to_target": first.versions_to_target,
            "final_accuracy": res.final_accuracy, "end_mean": res.end_accuracy_mean, "versions": res.versions,
            "wall_s": res.wall_seconds, "step_norm": float(np.mean(strategy.step_norms)),
            "step_norm_early": float(np.mean(strategy.step_norms[:100]))}


def label_skew(st: Study) -> dict[str, float]:
    """Total-variation distance of each device's label histogram from the whole training set's."""
    labels = st.labels
    k = int(labels.max()) + 1
    glob = np.bincount(labels, minlength=k) / len(labels)
    return {d.name: 0.5 * float(np.abs(np.bincount(labels[d.indices], minlength=k) / len(d.indices) - glob).sum())
            for d in st.fleet.devices}


def corr(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])  # Spearman


def diagnose(args: argparse.Namespace) -> None:
    fleets = Fleets(args.eval_samples)
    st = fleets.study(args.seed, args.split)
    strat = SearchFTTE("ftte", fleet_size=len(st.fleet.devices), record=True)
    out = run_one(st, strat, args.horizon)
    print(f"ftte seed {args.seed} {args.split} to {args.horizon:.0f} s: {out}")
    skew = label_skew(st)
    board = {d.name: st.fleet.boards[d.board].name for d in st.fleet.devices}
    factor = {d.name: d.factor for d in st.fleet.devices}
    rows = []
    for k, agg in enumerate(strat.log):
        ups = list(agg.updates)
        deltas = np.stack([u.delta.astype(np.float64) for u in ups])
        n = sample_counts(ups)
        fb = n / np.sqrt(1.0 + agg.staleness)
        fb_mean = (fb[:, None] * deltas).sum(0) / fb.sum()
        g = ratio_factor(np.array([u.variance for u in ups]), 1.0, 0.0)
        for i, u in enumerate(ups):
            d = deltas[i]
            nd = float(np.linalg.norm(d))
            others = np.delete(np.arange(len(ups)), i)
            loo = (fb[others, None] * deltas[others]).sum(0) / fb[others].sum()
            rows.append({"agg": k, "n": u.n, "loss": u.loss, "var": u.variance, "norm": nd,
                         "msq": float((d**2).mean()), "mean": float(d.mean()), "tau": int(agg.staleness[i]),
                         "skew": skew[u.device_id], "board": board[u.device_id], "factor": factor[u.device_id],
                         "g": float(g[i]), "share_ftte": float(agg.shares[i]), "share_fb": float(fb[i] / fb.sum()),
                         "cos_mean": float(d @ fb_mean / max(nd * np.linalg.norm(fb_mean), 1e-30)),
                         "cos_loo": float(d @ loo / max(nd * np.linalg.norm(loo), 1e-30))})
    if args.dump:
        Path(args.dump).write_text(json.dumps(rows))
    report_diagnosis(rows)


def report_diagnosis(rows: list[dict[str, Any]]) -> None:
    col = {k: np.array([r[k] for r in rows]) for k in rows[0] if k != "board"}
    boards = np.array([r["board"] for r in rows])
    print(f"{len(rows)} buffered updates in {int(col['agg'].max()) + 1} aggregations")
    print("Spearman correlation of var (and of g) with:")
    for k in ("n", "loss", "norm", "msq", "tau", "skew", "factor", "cos_loo"):
        print(f"  {k:8s} var {corr(col['var'], col[k]):+.3f}   g {corr(col['g'], col[k]):+.3f}")
    print(f"  var vs norm^2/d: median ratio var/msq = {np.median(col['var'] / col['msq']):.4f}")
    print(f"  share of updates with g < 1: {np.mean(col['g'] < 1):.3f}, g < 0.5: {np.mean(col['g'] < 0.5):.3f}, "
          f"median g of those < 1: {np.median(col['g'][col['g'] < 1]):.3f}")
    ratio = col["share_ftte"] / col["share_fb"]
    print("mean share of the step, FTTE / FedBuff weights on the same buffers (by quartile of each quantity):")
    for k in ("n", "loss", "norm", "tau", "skew", "cos_loo"):
        qs = np.quantile(col[k], [0.25, 0.5, 0.75])
        bins = np.digitize(col[k], qs)
        cells = " ".join(f"Q{b + 1}({col[k][bins == b].mean():.3g}): {ratio[bins == b].mean():.2f}" for b in range(4))
        print(f"  {k:8s} {cells}")
    for b in sorted(set(boards)):
        sel = boards == b
        print(f"  board {b}: {sel.sum()} updates, FTTE/FedBuff share {ratio[sel].mean():.2f}, "
              f"median n {np.median(col['n'][sel]):.0f}, median var {np.median(col['var'][sel]):.3g}")
    early = col["agg"] < 100
    print(f"first 100 aggregations: corr(var, n) {corr(col['var'][early], col['n'][early]):+.3f}, "
          f"corr(var, loss) {corr(col['var'][early], col['loss'][early]):+.3f}")


def search(args: argparse.Namespace) -> None:
    fleets = Fleets(args.eval_samples)
    out_path = Path(args.out) if args.out else None
    results: list[dict[str, Any]] = json.loads(out_path.read_text()) if out_path and out_path.exists() else []
    done = {(r["seed"], r["split"], r["candidate"], r["horizon"]) for r in results}
    for split in args.splits.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            todo = [c for c in args.candidates if (seed, split, c, args.horizon) not in done]
            if not todo:
                continue
            st = fleets.study(seed, split)
            for cand in todo:
                t0 = time.monotonic()
                row = run_one(st, SearchFTTE(cand, fleet_size=len(st.fleet.devices)), args.horizon)
                row.update(seed=seed, split=split, candidate=cand, horizon=args.horizon)
                results.append(row)
                print(f"{split} seed {seed} {cand}: ttt {row['time_to_target_s']}, final {row['final_accuracy']:.4f}, "
                      f"end mean {row['end_mean']:.4f}, step {row['step_norm']:.4f} "
                      f"({time.monotonic() - t0:.0f} s wall, "
                      f"load {os.getloadavg()[0]:.1f})", flush=True)
                if out_path:
                    out_path.write_text(json.dumps(results, indent=1))
    summarize(results, args.baseline)


def summarize(results: list[dict[str, Any]], baseline: str) -> None:
    """Per split and candidate: mean over seeds of time to target / baseline's, and end accuracy minus baseline's."""
    by = {(r["seed"], r["split"], r["candidate"], r["horizon"]): r for r in results}
    print(f"| split | horizon s | candidate | runs | time to target s (mean) | ttt / {baseline} (mean, max) "
          f"| final - {baseline}, points (mean, min) | end mean - {baseline}, points (mean, min) | final | end mean "
          "| mean step norm |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    keys = sorted({(r["split"], r["horizon"], r["candidate"]) for r in results})
    splits = {r["split"] for r in results}
    if len(splits) > 1:  # every (split, seed) pair pooled, per candidate
        keys += sorted({("all", r["horizon"], r["candidate"]) for r in results})
    for split, hz, cand in keys:
        pairs = sorted((s, sp) for (s, sp, c, h) in by if split in ("all", sp) and c == cand and h == hz
                       and (s, sp, baseline, h) in by)
        if not pairs:
            continue
        mine = [by[(s, sp, cand, hz)] for s, sp in pairs]
        base = [by[(s, sp, baseline, hz)] for s, sp in pairs]
        seeds = pairs
        tt = [m["time_to_target_s"] / b["time_to_target_s"] if m["time_to_target_s"] and b["time_to_target_s"]
              else float("nan") for m, b in zip(mine, base, strict=True)]
        fd = [100 * (m["final_accuracy"] - b["final_accuracy"]) for m, b in zip(mine, base, strict=True)]
        ed = [100 * (m["end_mean"] - b["end_mean"]) for m, b in zip(mine, base, strict=True)]
        ttt = [m["time_to_target_s"] if m["time_to_target_s"] else float("nan") for m in mine]
        print(f"| {split} | {hz:.0f} | {cand} | {len(seeds)} | {np.nanmean(ttt):.1f} | "
              f"{np.nanmean(tt):.3f}, {np.nanmax(tt):.3f} | "
              f"{np.mean(fd):+.2f}, {np.min(fd):+.2f} | {np.mean(ed):+.2f}, {np.min(ed):+.2f} | "
              f"{np.mean([m['final_accuracy'] for m in mine]):.4f} | {np.mean([m['end_mean'] for m in mine]):.4f} | "
              f"{np.mean([m['step_norm'] for m in mine]):.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("diagnose")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--split", default="natural")
    d.add_argument("--horizon", type=float, default=2000.0)
    d.add_argument("--eval-samples", type=int, default=1000)
    d.add_argument("--dump", default=None, help="write every buffered update's statistics to this JSON file")
    s = sub.add_parser("search")
    s.add_argument("--seeds", default="0")
    s.add_argument("--splits", default="natural")
    s.add_argument("--horizon", type=float, default=3000.0)
    s.add_argument("--eval-samples", type=int, default=1000)
    s.add_argument("--candidates", nargs="+", default=["fedbuff", "ftte"])
    s.add_argument("--baseline", default="fedbuff")
    s.add_argument("--out", default=None, help="JSON file of results; runs already in it are not repeated")
    s.add_argument("--summary", action="store_true", help="only print the table of --out")
    args = ap.parse_args()
    if args.mode == "diagnose":
        diagnose(args)
    elif args.summary:
        summarize(json.loads(Path(args.out).read_text()), args.baseline)
    else:
        search(args)


if __name__ == "__main__":
    main()
