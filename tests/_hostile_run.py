"""One engine run beside a fake board, alone in its process, for the host's peak RSS.

    python tests/_hostile_run.py SETUP.pkl RUN_DIR BEHAVIOUR

SETUP.pkl holds the fields of a prepared :class:`~tinyfed.host.setup.RunSetup` (the test plans
once; a plan costs seconds, a run here far less). The evaluator is left out: both runs compared
skip it alike. Prints one JSON line: the run's figures and ``vm_hwm_kib``, this process's peak
resident memory (``VmHWM`` of /proc/self/status).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from fake_board import FakeBoard

from tinyfed.host.engine import Engine, Limits, LocalTraining
from tinyfed.host.events import EventLog
from tinyfed.host.setup import DeviceSpec, RunSetup
from tinyfed.host.strategies import get_strategy

HOSTILE = "bad"


def _no_evaluation(vector: np.ndarray) -> tuple[float, float]:
    return 0.0, 0.0


def vm_hwm_kib() -> int:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else 0


def run(fields: dict[str, Any], run_dir: Path, behaviour: str) -> dict[str, Any]:
    setup = RunSetup(**fields, evaluate=_no_evaluation)
    names = [n for n in setup.images if n != HOSTILE]
    with FakeBoard(behaviour) as fake, EventLog(run_dir) as events:
        devices = [DeviceSpec(n, f"sim://mps2-an386?name=rss-{n}", "mps2-an386") for n in names]
        devices.append(DeviceSpec(HOSTILE, fake.url, "mps2-an386"))
        answered = [0]

        def progress(row: dict[str, Any]) -> None:  # stop once the fake board's first task ended
            if row.get("kind") == "tick" and answered[0] == 0 and fake.requests["UPDATE_READ"] > 0:
                answered[0] = 1
                engine.limits = dataclasses.replace(engine.limits, max_versions=engine.rounds.version + 1)

        engine = Engine(setup, devices, get_strategy("ftte", ignore_extra=True, buffer_size=2), events,
                        training=LocalTraining(epochs=1, lr=0.005), limits=Limits(max_versions=20), seed=3,
                        retries=0, checkpoints=False, progress=progress)
        result = engine.run()
    return {"behaviour": behaviour, "versions": result.versions, "rejected": result.updates_rejected,
            "lost": result.updates_lost, "update_reads": fake.requests["UPDATE_READ"], "vm_hwm_kib": vm_hwm_kib()}


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        fields = pickle.load(f)  # noqa: S301 - the test's own file
    print(json.dumps(run(fields, Path(sys.argv[2]), sys.argv[3])))
