"""The simulated fleet's options, spelled once for the benches that run studies (simulate, fair_study)."""

from __future__ import annotations

import argparse


def add_fleet_options(ap: argparse.ArgumentParser, *, strategies: str, eval_samples: int) -> None:
    """Model, fleet size, stragglers, target, variant labels, version cap and evaluation subset."""
    ap.add_argument("--model", default="har_cnn")
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--stragglers", type=float, default=0.9)
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--strategies", default=strategies,
                    help="strategy labels NAME[@subset|@dense][+overselect], comma-separated")
    ap.add_argument("--max-versions", type=int, default=400)
    ap.add_argument("--eval-samples", type=int, default=eval_samples,
                    help="per-version evaluation subset (0: the whole test split; final accuracy is always whole)")
