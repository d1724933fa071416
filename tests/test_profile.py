"""`tinyfed profile` and the PROFILE / PROFILE_READ / KERNELS commands.

Fast: the sim:// twin (the JSON and table shapes, the twin's honest estimate, the wire errors) and
the CLI's one-line errors. Slow: the real firmware in QEMU mps2-an386 under -icount (per-op
instructions that sum to the whole run, MACs equal to the host's count, both kernel paths with
equal outputs, the training step split into head and tail).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests import _models
from tinyfed.cli import cli
from tinyfed.firmware_bridge.compile.blob import compile_blob
from tinyfed.firmware_bridge.link.client import BoardClient
from tinyfed.firmware_bridge.link.errors import DeviceError
from tinyfed.firmware_bridge.link.framing import Command, Status
from tinyfed.firmware_bridge.link.profile_link import COUNTER_ESTIMATE, OP_BYTES
from tinyfed.firmware_bridge.link.train_link import TRAIN_RESPONSE, TrainReport
from tinyfed.firmware_bridge.twin.sim import forget_sim_boards
from tinyfed.host.profiling import Fragment, PathResult, ProfileReport, op_macs, profile_input
from tinyfed.host.simulator import graph_macs
from tinyfed.models.tflite_graph import TfliteGraph


@pytest.fixture(autouse=True)
def _fresh_sim_boards():
    forget_sim_boards()
    yield
    forget_sim_boards()


@pytest.fixture(scope="module")
def chain_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "chain.tflite"
    path.write_bytes(_models.chain_cnn_int8())
    return path


def _cli_json(*args: str) -> dict:
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _one_line_error(*args: str, needles: tuple[str, ...]) -> None:
    """Run the console entry point in a child, as a user would: one `error:` line with a fix."""
    proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert "Fix:" in errors[0]


# -- the twin and the CLI's shape ---------------------------------------------------------------


def test_json_on_the_twin_is_an_estimate_with_every_op(chain_path: Path) -> None:
    doc = _cli_json("profile", str(chain_path), "--board", "mps2-an386", "--port", "sim://mps2-an386", "--whole")
    graph = TfliteGraph.from_file(chain_path)
    assert doc["measure"] == "estimate" and doc["estimated"] is True
    assert doc["instructions_per_mac"] is None  # the twin counts no instructions: never claims one
    assert doc["kernel_path"] == "twin"
    assert doc["fragment"] == {"kind": "whole", "cut_op": None, "ops": len(graph.ops)}
    assert set(doc["paths"]) == {"fast", "reference"} and doc["outputs_equal"] is True
    assert [r["op"] for r in doc["ops"]] == [op.name for op in graph.ops]
    assert sum(r["macs"] for r in doc["ops"]) == doc["macs"] == graph_macs(graph)
    for path, figures in doc["paths"].items():
        assert sum(r[path]["estimate"] for r in doc["ops"]) + figures["overhead_estimate"] == figures["estimate"]
        assert sum(r[path]["share"] for r in doc["ops"]) == pytest.approx(1.0, abs=1e-3)


def test_plan_cut_and_training_step_on_the_twin(chain_path: Path, tmp_path: Path) -> None:
    # A 16 KiB board: the plan freezes the model's first ops (on a larger board it trains all of it).
    text = (Path(__file__).parents[1] / "tinyfed/boards/data/nrf52840.toml").read_text()
    (tmp_path / "tiny-m4.toml").write_text(text.replace('name = "nrf52840"', 'name = "tiny-m4"')
                                           .replace("ram_kib = 256", "ram_kib = 16"))
    doc = _cli_json("profile", str(chain_path), "--board", "tiny-m4", "--boards-dir", str(tmp_path),
                    "--port", "sim://tiny-m4", "--train", "--reference")
    assert doc["fragment"]["kind"] == "plan-cut" and doc["fragment"]["cut_op"] >= 1
    assert doc["fragment"]["ops"] == doc["fragment"]["cut_op"] == len(doc["ops"])
    assert list(doc["paths"]) == ["reference"] and doc["main_path"] == "reference"
    assert "speedup" not in doc and doc["outputs_equal"] is None
    step = doc["train"]["reference"]
    assert (step["samples"], step["steps"]) == (16, 1)
    assert step["cycles"] is None and step["head_cycles"] is None  # nothing measured: no made-up zero


def test_table_on_the_twin_says_estimate(chain_path: Path) -> None:
    result = CliRunner().invoke(cli, ["profile", str(chain_path), "--board", "mps2-an386", "--port",
                                      "sim://mps2-an386", "--whole"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "estimate" in result.stdout and "CONV_2D" in result.stdout and "equal" in result.stdout


def test_unknown_board_is_one_line() -> None:
    _one_line_error("profile", "har_cnn", "--board", "nrf5284", needles=("nrf5284",))


def test_board_without_emulator_is_one_line() -> None:
    _one_line_error("profile", "har_cnn", "--board", "nrf52840", needles=("nrf52840", "--port"))


def test_bad_model_is_one_line(tmp_path: Path) -> None:
    _one_line_error("profile", str(tmp_path / "missing.tflite"), "--board", "mps2-an386", "--port",
                    "sim://mps2-an386", needles=("missing.tflite",))
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 3)
    _one_line_error("profile", str(corrupt), "--board", "mps2-an386", "--port", "sim://mps2-an386", "--whole",
                    needles=("corrupt.tflite",))


# -- the wire, on the twin ----------------------------------------------------------------------


def _status(client: BoardClient, code: int, payload: bytes = b"") -> int:
    with pytest.raises(DeviceError) as exc:
        client.request(code, payload)
    return exc.value.status


def test_twin_commands_and_their_errors(chain_path: Path) -> None:
    tflite = chain_path.read_bytes()
    with BoardClient("sim://mps2-an386") as c:
        c.hello()
        assert _status(c, Command.PROFILE) == Status.NO_MODEL
        assert _status(c, Command.PROFILE_READ, struct.pack("<HH", 0, 1)) == Status.NO_DATA
        assert c.kernels().reference is False
        assert c.kernels(reference=True).reference is True and c.kernels().reference is True
        assert _status(c, Command.KERNELS, b"\x02") == Status.BAD_LENGTH
        c.load_fragment(compile_blob(tflite))
        x = profile_input(tflite)
        want = c.infer(x)
        run = c.profile(x)  # the engine's mode: reference, as KERNELS set it
        assert run.reference and run.counter == COUNTER_ESTIMATE and run.estimated and run.clock_hz == 0
        assert np.array_equal(np.frombuffer(run.output, np.int8), want)
        names, macs = op_macs(tflite)
        assert all(op.cycles >= 1 for op in run.ops)
        for op, name, m in zip(run.ops, names, macs, strict=True):  # the estimate: the MACs of the weighted ops
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                assert op.cycles == m
        assert run.cycles == run.op_cycles
        n = len(run.ops)
        assert _status(c, Command.PROFILE_READ, struct.pack("<HH", n, 1)) == Status.BAD_ARGUMENT
        assert _status(c, Command.PROFILE_READ, struct.pack("<H", 0)) == Status.BAD_LENGTH
        assert _status(c, Command.PROFILE, b"\x00\x00") == Status.BAD_LENGTH
        assert len(c.request(Command.PROFILE_READ, struct.pack("<HH", 1, n - 1))) == (n - 1) * OP_BYTES


def test_train_report_with_and_without_head_cycles() -> None:
    short = TrainReport(3, 16, 1, 0.5, 0.25, 100, 1234, False)
    assert len(short.pack()) == TRAIN_RESPONSE.size and TrainReport.unpack(short.pack()) == short
    long = TrainReport(3, 16, 1, 0.5, 0.25, 100, 1234, False, head_cycles=1000)
    assert len(long.pack()) == TRAIN_RESPONSE.size + 4 and TrainReport.unpack(long.pack()).head_cycles == 1000


def test_instructions_come_from_cycles_at_the_clock_and_shift() -> None:
    frag = Fragment("m", "whole", b"", None, ["CONV_2D", "SOFTMAX"], [1000, 10])
    fast = PathResult(1000, [800, 150], [True, False], b"\x01")
    ref = PathResult(4000, [3900, 60], [False, False], b"\x01")
    report = ProfileReport(frag, "b", "socket://x", "dsp", "instructions", 25_000_000, 4,
                           {"fast": fast, "reference": ref})
    doc = report.as_dict()
    # 25 MHz SysTick, 16 ns per instruction: 2.5 instructions per cycle.
    assert doc["instructions"] == 2500 and doc["paths"]["reference"]["instructions"] == 10000
    assert doc["instructions_per_mac"] == pytest.approx(2500 / 1010, abs=1e-4)
    assert doc["paths"]["fast"]["overhead_instructions"] == 125
    assert doc["ops"][0]["fast"]["kernel"] == "dsp" and doc["ops"][1]["fast"]["kernel"] == "c"
    assert doc["speedup"] == 4.0 and doc["outputs_equal"] is True
    assert report.int8_macs_per_s() == pytest.approx(1010 * 25e6 / 1000)
    real = ProfileReport(frag, "b", "/dev/ttyACM0", "dsp", "cycles", 64_000_000, None, {"fast": fast})
    assert real.as_dict()["cycles"] == 1000 and real.as_dict()["instructions_per_mac"] is None


# -- the real firmware in QEMU ------------------------------------------------------------------


@pytest.mark.slow
def test_har_cnn_on_mps2_an386(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.setdefault("TINYFED_CACHE_DIR", str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "tinyfed.cli", "profile", "har_cnn", "--board", "mps2-an386",
                           "--json", "--train"], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["measure"] == "instructions" and doc["kernel_path"] == "dsp" and doc["icount_shift"] == 4
    assert set(doc["paths"]) == {"fast", "reference"} and doc["outputs_equal"] is True
    assert doc["fragment"]["kind"] == "plan-cut"
    for path, figures in doc["paths"].items():
        ops_sum = sum(r[path]["instructions"] for r in doc["ops"])
        assert ops_sum == pytest.approx(figures["op_instructions"], abs=1)
        assert ops_sum + figures["overhead_instructions"] == pytest.approx(figures["instructions"], abs=1)
        assert 0 <= figures["overhead_instructions"] < 0.01 * figures["instructions"]  # op decoding only
        assert all(r[path]["instructions"] > 0 for r in doc["ops"])
    assert doc["instructions_per_mac"] == doc["paths"]["fast"]["instructions_per_mac"] > 0
    from tinyfed.boards import get_board
    from tinyfed.host.profiling import load_fragment

    os.environ.setdefault("TINYFED_CACHE_DIR", env["TINYFED_CACHE_DIR"])
    frag = load_fragment("har_cnn", get_board("mps2-an386"))
    assert doc["macs"] == graph_macs(TfliteGraph.from_bytes(frag.tflite)) == sum(r["macs"] for r in doc["ops"])
    for path in ("fast", "reference"):
        step = doc["train"][path]
        assert step["steps"] == 1 and 0 < step["head_cycles"] < step["cycles"]
        assert step["head_cycles"] + step["tail_cycles"] == step["cycles"]


# -- bench/speed.py: the [speed] tables from the profile ------------------------------------------


def _speed_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_speed", Path(__file__).parents[1] / "bench" / "speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_tables_take_int8_from_the_profile_and_fp32_from_bench() -> None:
    from tinyfed.boards.registry import BUILTIN_DIR

    speed = _speed_module()
    bench = {"clock_hz": 25_000_000, "int8_macs_per_s": 12e6, "fp32_flops_per_s": 20e6, "int8_insn_per_mac": 5.0,
             "fp32_insn_per_flop": 3.1}
    prof = {"model": "har_cnn", "cut_op": 5, "macs": 2_756_608, "cycles": 1_000_000, "kernel_path": "dsp",
            "int8_macs_per_s": 68_915_200.0, "int8_insn_per_mac": 0.91}
    r = speed.merge_rates(bench, prof)
    assert (r["int8_macs_per_s"], r["fp32_flops_per_s"], r["int8_from"]) == (68_915_200.0, 20e6, "profile")
    assert speed.merge_rates(bench, None)["int8_macs_per_s"] == 12e6
    source = speed.source_text(r, "2026-12-05")
    assert source.startswith("firmware PROFILE and BENCH under qemu -icount shift=4")
    assert "har_cnn's frozen fragment (ops 0..4, 2,756,608 MACs, dsp kernels) at 0.91 instructions" in source
    text = (BUILTIN_DIR / "mps2-an386.toml").read_text()
    new = speed.speed_table_text(text, round(r["int8_macs_per_s"]), round(r["fp32_flops_per_s"]), source)
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines(), strict=True) if a != b]
    assert {b.split(" = ")[0] for _, b in changed} <= {"int8_macs_per_s", "fp32_flops_per_s", "source", "measured"}
    assert "int8_macs_per_s = 68_915_200" in new


@pytest.mark.slow
@pytest.mark.parametrize(("board_name", "path"), [("mps2-an386", "dsp"), ("mps3-an547", "mve")])
def test_firmware_commands_in_qemu(chain_path: Path, board_name: str, path: str) -> None:
    from tinyfed.firmware_bridge.emulate.build import build_firmware
    from tinyfed.firmware_bridge.emulate.emulator import launch_qemu

    tflite = chain_path.read_bytes()
    x = profile_input(tflite)
    elf = build_firmware(board_name)
    with launch_qemu(board_name, elf, extra_args=("-icount", "shift=4")) as emu, \
            BoardClient(emu.url, name=emu.name, timeout=30.0) as c:
        c.hello()
        assert c.kernels() == type(c.kernels())(path, False)  # the core's path, optimised kernels at reset
        assert _status(c, Command.PROFILE) == Status.NO_MODEL
        assert _status(c, Command.PROFILE_READ, struct.pack("<HH", 0, 1)) == Status.NO_DATA
        c.load_fragment(compile_blob(tflite))
        want = c.infer(x)
        fast = c.profile(x, reference=False)
        assert not fast.reference and fast.clock_hz > 0 and not fast.estimated
        assert np.array_equal(np.frombuffer(fast.output, np.int8), want)
        assert len(fast.ops) == len(TfliteGraph.from_bytes(tflite).ops)
        assert all(op.cycles > 0 for op in fast.ops) and fast.op_cycles < fast.cycles
        assert [op.code for op in fast.ops] == [op.builtin_code for op in TfliteGraph.from_bytes(tflite).ops]
        assert c.kernels(reference=True).reference
        assert np.array_equal(c.infer(x), want)  # INVOKE in reference mode: the same bytes
        ref = c.profile(x)  # no mode byte: the engine's mode (reference)
        assert ref.reference and not any(op.fast for op in ref.ops)
        assert np.array_equal(np.frombuffer(ref.output, np.int8), want)
        n = len(ref.ops)
        assert _status(c, Command.PROFILE_READ, struct.pack("<HH", 1, n)) == Status.BAD_ARGUMENT
        assert _status(c, Command.PROFILE, b"\x02") == Status.BAD_LENGTH
        assert not c.kernels(reference=False).reference
