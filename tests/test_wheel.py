"""`pip install tinyfed` does the whole job (issue 19): the wheel, installed without `[convert]` into a
fresh virtualenv, builds the firmware and trains the zoo's har_cnn from a directory outside the checkout.

The wheel is built from a copy of the sources (pip builds in the source tree and would leave build/
there), installed with its dependencies from the index (pip's cache keeps that quick), and every command
runs with the checkout off ``sys.path``, its own ``$HOME`` and ``$XDG_CACHE_HOME``. ``tests/test_no_tensorflow.py``
is the fast guard of the same promise for the running path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What a build needs from the checkout; everything else (tests, docs, bench) stays out of the wheel.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "tinyfed", "firmware")


def _sh(argv: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900,
        ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode in ok, f"{argv}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_wheel_installs_and_runs_without_the_checkout_or_tensorflow(tmp_path: Path) -> None:
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("the Arm cross-compiler is not installed (sudo apt-get install gcc-arm-none-eabi)")
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        item = REPO / name
        if item.is_dir():
            shutil.copytree(item, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(item, src / name)
    dist = tmp_path / "dist"
    _sh([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-w", dist, "-q"], cwd=tmp_path)
    (wheel,) = dist.glob("tinyfed-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("tinyfed/_firmware/Makefile", "tinyfed/_firmware/boards/mps2-an386/memory.ld",
                 "tinyfed/_firmware/engine/tfmb.c", "tinyfed/models/prebuilt/har_cnn.int8.tflite",
                 "tinyfed/models/prebuilt/har_cnn.fisher.json", "tinyfed/models/data/hapt_runs.npz",
                 "tinyfed/models/data/HAPT-LICENSE.txt", "tinyfed/web/static/index.html",
                 "tinyfed/boards/data/nrf52840.toml", "tinyfed/planner/fleets/smartwatch.toml"):
        assert must in names, must

    venv = tmp_path / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)  # this pip installs into it
    py, tinyfed = venv / "bin" / "python", venv / "bin" / "tinyfed"
    _sh([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-compile", wheel], cwd=tmp_path)

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TINYFED_CACHE_DIR", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(tmp_path / "cache"), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")

    probe = ("import importlib.util, json, tinyfed\n"
             "from tinyfed.firmware_bridge.emulate.build import default_out_dir\n"
             "print(json.dumps({'tinyfed': tinyfed.__file__, 'fw_out': str(default_out_dir('mps2-an386')),\n"
             "  'absent': [m for m in ('tensorflow', 'keras', 'tf_keras') if importlib.util.find_spec(m) is None]}))")
    where = json.loads(_sh([py, "-c", probe], cwd=elsewhere, env=env).stdout)
    assert Path(where["tinyfed"]).is_relative_to(venv), where  # the installed package, not the checkout
    assert where["absent"] == ["tensorflow", "keras", "tf_keras"]

    doctor = json.loads(_sh([tinyfed, "doctor", "--json"], cwd=elsewhere, env=env).stdout)
    assert doctor["core_ok"] is True

    (shipped,) = venv.glob("lib/python*/site-packages/tinyfed/_firmware")
    sources = sorted(shipped.rglob("*"))
    build = json.loads(_sh([tinyfed, "firmware", "build", "--board", "mps2-an386", "--json"], cwd=elsewhere,
                           env=env).stdout)
    assert sorted(shipped.rglob("*")) == sources  # make wrote nothing beside the installed sources
    elf = Path(build["elf"])
    # Built in the user's cache, where `tinyfed emulate` and --emulate runs look for it, not in site-packages.
    assert elf.is_file() and elf.parent == Path(where["fw_out"]) == tmp_path / "cache" / "tinyfed" / "firmware" / \
        "mps2-an386"

    demo = _sh([tinyfed, "demo", "--simulate", "--out", elsewhere / "demo"], cwd=elsewhere, env=env)
    assert "(reached 0.75)" in demo.stdout + demo.stderr
    # One version on 4 boards stops short of run's 0.85 target: exit 1 is run's "stopped before its target"
    # (docs/cli.md); the run itself completed and exported its int8 model.
    run = _sh([tinyfed, "run", "--simulate", "4", "--model", "har_cnn", "--max-versions", "1", "--out",
               elsewhere / "run"], cwd=elsewhere, env=env, ok=(0, 1))
    assert run.returncode == 0 or "stopped before its target accuracy" in run.stderr, run.stderr[-2000:]
    assert (elsewhere / "run" / "export" / "final_int8.tflite").is_file()
    assert "Traceback" not in run.stderr + demo.stderr

    print(f"\nwheel {wheel.stat().st_size / 1e6:.1f} MB, virtualenv {_du(venv) / 1e6:.0f} MB")
