"""The running path needs no TensorFlow: every command on zoo models and int8 .tflite files, with
tensorflow/keras made unimportable in the process (and in any Python process it starts).

The base install (``pip install tinyfed``, no ``[convert]``) has no TensorFlow; this catches a regression
in seconds, without the slow wheel-and-venv test (tests/test_wheel.py). A ``sitecustomize`` on
``PYTHONPATH`` puts a meta path finder first that refuses those imports and records each attempt.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "keras", "tf_keras", "tensorflow_cpu")

_SITECUSTOMIZE = f'''
import sys

BLOCKED = {BLOCKED!r}
ATTEMPTS = []


class _NoTensorFlow:
    """Refuses TensorFlow and Keras as a base install without [convert] would."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            ATTEMPTS.append(name)
            raise ImportError(f"No module named {{name!r}} (blocked by tests/test_no_tensorflow.py)")
        return None


sys.meta_path.insert(0, _NoTensorFlow())
'''

# Runs each command in this one process (one interpreter start for all), then reports, per command, its
# exit code, output and the blocked imports it tried.
_DRIVER = '''
import json, sys
import sitecustomize
from click.testing import CliRunner
from tinyfed.cli import cli

report = []
for args in json.loads(sys.argv[1]):
    del sitecustomize.ATTEMPTS[:]
    result = CliRunner().invoke(cli, args)
    report.append({"args": args, "code": result.exit_code, "output": result.output[-3000:],
                   "tried": sorted(set(sitecustomize.ATTEMPTS))})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in sitecustomize.BLOCKED)
print(json.dumps({"report": report, "loaded": loaded}))
'''


def _env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    return env


def test_every_command_runs_without_tensorflow(tmp_path: Path) -> None:
    from tinyfed.models.prebuilt_zoo import int8_path

    user_model = tmp_path / "my_int8.tflite"  # a user's int8 model: any file that is one
    user_model.write_bytes(int8_path("digits_cnn").read_bytes())
    keras_file = tmp_path / "float.keras"
    keras_file.write_bytes(b"PK\x05\x06" + bytes(18))  # never opened: TensorFlow is missing first
    rep = tmp_path / "rep.npy"
    np.save(rep, np.zeros((4, 8, 8, 1), np.float32))
    run_dir = tmp_path / "run"
    commands = [
        ["plan", "har_cnn", "--board", "nrf52840", "--out", str(tmp_path / "plan"), "--json"],
        ["plan", str(user_model), "--board", "apollo3", "--out", str(tmp_path / "plan2")],
        ["check", "har_cnn", "--url", "sim://nrf52840", "--samples", "2"],
        ["check", str(user_model), "--url", "sim://apollo3", "--samples", "2"],
        ["profile", "har_cnn", "--board", "nrf52840", "--port", "sim://nrf52840"],
        ["run", "--simulate", "2", "--model", "digits_cnn", "--max-versions", "1", "--max-windows", "16",
         "--target-accuracy", "0.1", "--out", str(run_dir)],
        ["demo", "--simulate", "2", "--target-accuracy", "0.1", "--max-windows", "16", "--out",
         str(tmp_path / "demo")],
        ["simulate", "--count", "4", "--model", "digits_cnn", "--strategies", "ftte", "--max-versions", "1",
         "--horizon", "none", "--out", str(tmp_path / "sim")],
        ["plan", str(keras_file), "--representative", str(rep), "--board", "nrf52840"],
    ]
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(commands)], env=_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    *good, keras = out["report"]
    for rec in good:
        assert rec["code"] == 0, (rec["args"], rec["output"])
        assert rec["tried"] == [], f"{rec['args'][0]} tried to import {rec['tried']}"
    assert out["loaded"] == []
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert plan["importance"] == "fisher"  # the shipped ranking, not the depth fallback
    assert (run_dir / "export" / "final_int8.tflite").is_file()
    # A float Keras model without the extra: one line saying what to install, the CLI's bad-input exit code.
    assert keras["code"] == 2, keras["output"]
    errors = [ln for ln in keras["output"].splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "pip install 'tinyfed[convert]'" in errors[0], keras["output"]
    assert "Traceback" not in keras["output"]

    # The dashboard serves a finished run's page and data, still without TensorFlow.
    dash = subprocess.Popen([sys.executable, "-m", "tinyfed.cli", "dashboard", str(run_dir), "--port", "0"],
                            env=_env(tmp_path), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        assert dash.stderr is not None
        url = None
        for line in dash.stderr:  # it names its URL on stderr before serving
            m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the dashboard never printed its URL"
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        dash.terminate()
        dash.wait(timeout=30)


@pytest.mark.parametrize("name", ["har_cnn", "digits_cnn"])
def test_zoo_int8_and_ranking_load_without_tensorflow(name: str) -> None:
    """What the planner takes for a zoo model when TensorFlow is absent: the shipped graph and ranking."""
    from tinyfed.models.prebuilt_zoo import load_fisher
    from tinyfed.models.zoo import get_zoo_model
    from tinyfed.planner.config import TrainingConfig
    from tinyfed.planner.sources import load_model_source

    source = load_model_source(name, None, TrainingConfig())
    assert source.tflite == get_zoo_model(name).int8_tflite() and source.keras_model is None
    assert source.fisher is not None and source.fisher.method == "fisher"
    assert load_fisher(name, source.tflite, TrainingConfig().proxy_samples) is not None
