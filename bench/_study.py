"""The simulated fleet that the privacy (``dp.py``) and poisoning (``robust.py``) benchmarks share: one
``tinyfed simulate`` study of FTTE on straggling boards, built once per process, and the line that
says what it is, so the two tables in BENCHMARKS.md describe their setups alike."""

from __future__ import annotations

import os
import time
from typing import Any

from tinyfed.host.simulator import SimModel, Study, StudyConfig


def load() -> str:
    """The host's load, printed with every benchmark: the wall seconds mean little without it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} cores"


def ftte_study(model: str, clients: int, seed: int, **config: Any) -> tuple[StudyConfig, Study, SimModel]:
    """The study of ``model`` on ``clients`` boards (``tinyfed simulate``'s defaults otherwise; FTTE only;
    no common horizon, each run's own limits end it), and its subset model; prints the header line:
    fleet, slowdown, split, windows per board, update size, seed and the time the study took to build."""
    cfg = StudyConfig(model=model, clients=clients, strategies=("ftte",), seed=seed, horizon=None, **config)
    started = time.monotonic()
    study = Study(cfg)
    subset = study.model("subset")
    info = study.describe()
    print(f"{model} FTTE (K = {cfg.strategy_params.buffer_size}): {info['fleet']}, slowdown {info['slowdown']}, "
          f"{info['partition']} split, {info['samples_per_device']['mean']:.1f} samples per board, "
          f"{subset.size:,} values per update, seed {seed}; study built in {time.monotonic() - started:.1f} s",
          flush=True)
    return cfg, study, subset
