"""The planner models the firmware: its RAM lines are the arena the firmware fills, the batch size
costs nothing, ``fits`` agrees at every level, a suggested board really fits, and the importance
reported is the one used (issue 13)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import _models
import _watermark
import engine_models

from tinyfed import ops
from tinyfed.boards import get_board, single_board_fleet
from tinyfed.errors import ModelError
from tinyfed.firmware_bridge.compile.blob import compile_blob, parse_blob
from tinyfed.firmware_bridge.compile.train_blob import compile_program, parse_program
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.planner import trainable as tfw
from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import ModelSource, Plan, make_plan

NRF = single_board_fleet(get_board("nrf52840"))


def _align8(n: int) -> int:
    return (n + 7) // 8 * 8


def _plan(tflite: bytes, cfg: TrainingConfig | None = None, out: Path | None = None, fleet=NRF,
          boards_dirs: tuple[Path, ...] = ()) -> Plan:
    return make_plan(ModelSource("model.tflite", "tflite", tflite), fleet, cfg or TrainingConfig(), out,
                     measure=False, extra_board_dirs=boards_dirs)


@pytest.fixture(scope="module")
def ds_cnn() -> bytes:
    return _watermark.ds_cnn_int8()


def test_ds_cnn_plans_on_the_nrf52840_whatever_the_batch(ds_cnn: bytes) -> None:
    """The depthwise keyword model that batch-16 activations made unplannable trains a non-empty w*,
    and the batch size changes neither w* nor a byte of RAM (one sample at a time on the board)."""
    small = _plan(ds_cnn, TrainingConfig(batch_size=1))
    big = _plan(ds_cnn, TrainingConfig(batch_size=256))
    assert small.fits and small.trainable_params > 0 and not small.problems
    assert big.trainable_params == small.trainable_params and big.cut == small.cut
    assert big.training == small.training
    assert big.fits_by_board["nrf52840"].ram_used == small.fits_by_board["nrf52840"].ram_used <= 256 * 1024
    assert small.arena + small.training.total <= small.m_min_bytes


@pytest.mark.parametrize("model", ["ds_cnn", "chain_cnn", "kernel_zoo", "kernel_zoo_per_tensor"])
def test_ram_lines_are_the_arena_the_firmware_fills(model: str, tmp_path: Path) -> None:
    """The head arena is the TFMB blob's, the training state the TFTR program's (``tftr_ram_bytes``),
    each 8-aligned as train.c places them, plus one update scale per trained channel."""
    plan = _plan(_watermark.model_builders()[model](), out=tmp_path)
    assert plan.fits and plan.trainable_params > 0
    files = {k: Path(p).read_bytes() for k, p in plan.files.items() if k in ("frozen", "tail", "trainable")}
    program = compile_program(files["tail"], files["trainable"])
    info = parse_program(program)
    assert len(program) <= plan.program_bytes <= len(program) + 16  # the board's program store must hold it
    if "frozen" in files:
        assert plan.arena == _align8(parse_blob(compile_blob(files["frozen"])).arena_bytes)
    else:
        assert plan.cut == 0 and plan.arena == _align8(info.input_elems)
    rows = sum(len(u.channels) for u in tfw.decode(files["trainable"]))
    assert info.trainable_count == plan.trainable_params
    assert plan.training.total == _align8(info.ram_bytes) + 4 * rows
    assert plan.training.activations + plan.training.scratch == info.work_bytes


def test_an_empty_w_star_fits_no_board_and_the_suggested_board_does(ds_cnn: bytes, tmp_path: Path) -> None:
    boards = tmp_path / "boards"
    boards.mkdir()
    text = (Path(__file__).parents[1] / "tinyfed/boards/data/nrf52840.toml").read_text()
    (boards / "tinywatch.toml").write_text(text.replace('name = "nrf52840"', 'name = "tinywatch"')
                                           .replace("ram_kib = 256", "ram_kib = 24"))
    tiny = single_board_fleet(get_board("tinywatch", (boards,)))
    plan = _plan(ds_cnn, out=tmp_path / "p", fleet=tiny, boards_dirs=(boards,))
    doc = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan.trainable_params == 0
    assert doc["fits"] is False and doc["boards"]["tinywatch"]["fits"] is False
    assert any("no trainable unit fits" in p for p in doc["problems"])
    assert doc["boards"]["tinywatch"]["problems"]
    suggested = [s for s in doc["suggestions"] if "smallest known real board" in s]
    assert len(suggested) == 1
    name = suggested[0].split(": ", 1)[1].split(" ")[0]
    there = _plan(ds_cnn, fleet=single_board_fleet(get_board(name)))
    assert there.fits and there.trainable_params > 0
    assert all(f.fits for f in there.fits_by_board.values())


@pytest.mark.parametrize("trainable", ["auto", "full"])
def test_fits_agrees_at_every_level(trainable: str) -> None:
    fleet = single_board_fleet(get_board("nrf52840"))
    plan = make_plan(ModelSource("k.tflite", "tflite", engine_models.kernel_zoo_int8()), fleet, TrainingConfig(),
                     None, measure=False, trainable=trainable)
    doc = plan.as_dict()
    assert doc["fits"] == all(b["fits"] for b in doc["boards"].values())
    assert doc["fits"] == (not doc["problems"])
    for name, board in doc["boards"].items():
        assert board["fits"] == (not board["problems"])
        assert board["fits"] == (board["ram_bytes_used"] <= board["ram_bytes_budget"]
                                 and board["flash_bytes_used"] <= board["flash_bytes_budget"]), name


def test_the_importance_reported_is_the_one_used() -> None:
    asked = _plan(_models.chain_cnn_int8(), TrainingConfig(importance="fisher")).as_dict()
    assert asked["importance"] == asked["training_config"]["importance"] == "depth"
    assert any("depth is used, not fisher" in n for n in asked["notes"])
    plain = _plan(_models.chain_cnn_int8(), TrainingConfig(importance="depth")).as_dict()
    assert plain["importance"] == plain["training_config"]["importance"] == "depth" and not plain["notes"]


def test_a_model_the_firmware_cannot_run_is_still_refused_by_name() -> None:
    data = _models.residual_int8()
    names = {op.name for op in TfliteGraph.from_bytes(data).ops}
    missing = names - set(ops.firmware_ops())
    if missing:
        with pytest.raises(ModelError, match=sorted(missing)[0]):
            _plan(data)
    else:
        assert _plan(data).fits


def test_the_plan_keeps_room_for_the_head_cache_it_is_asked_for(ds_cnn: bytes) -> None:
    """train.c caches n x (1 + head output bytes) above the update scales after the first epoch, if it fits."""
    plan = _plan(ds_cnn, TrainingConfig(head_cache_samples=20))
    assert plan.fits and plan.cut > 0 and plan.trainable_params > 0
    per_sample = 1 + plan.facts[plan.cut].input_elems
    assert plan.training.head_cache == 20 * per_sample
    assert plan.arena + plan.training.total <= plan.m_min_bytes
    assert plan.fits_by_board["nrf52840"].head_cache_samples >= 20
    assert _plan(ds_cnn).training.head_cache == 0
