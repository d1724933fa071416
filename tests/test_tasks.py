"""Tasks beyond softmax classification on the host: each task's metric, the task a model and its
data imply, the data each task takes (and the one-line refusals of bad data and options), and an
autoencoder trained federated on ``sim://`` boards, scored by ROC AUC on injected anomalies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from click.testing import CliRunner
from task_models import (
    anomaly_split,
    fc_autoencoder_int8,
    fc_multilabel_int8,
    fc_regressor_int8,
    multilabel_data,
    regression_data,
)

from tinyfed.cli import cli
from tinyfed.errors import DatasetError, TinyfedError
from tinyfed.host.config import RunConfig, TaskName
from tinyfed.host.rundata import ANOMALY_KEY, resolve_task, user_run_data
from tinyfed.models.tflite_graph import TfliteGraph
from tinyfed.training.metrics import metric_name, micro_f1, r2_score, roc_auc, score
from tinyfed.training.task import Task

# -- metrics --------------------------------------------------------------------------------------


def test_roc_auc_counts_ordered_pairs_and_ties_as_one_half() -> None:
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats 0.1, 0.8 beats both -> 3 of 4
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # the positive 0.5 ties the negative 0.5 (one half) and beats 0.2; 0.9 beats both -> 3.5 of 4
    assert roc_auc(np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1])) == 0.875
    assert roc_auc(np.array([3.0, 3.0, 3.0]), np.array([1, 0, 1])) == 0.5  # all tied: chance
    assert roc_auc(np.array([0.0, 1.0]), np.array([True, False])) == 0.0  # perfectly inverted
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc(np.array([1.0, 2.0]), np.array([1, 1]))


def test_roc_auc_matches_scikit_learn_with_many_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 7, size=500).astype(np.float64)  # few distinct values: ties everywhere
    labels = rng.random(500) < 0.3
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_micro_f1_r2_and_each_tasks_loss_by_hand() -> None:
    probs = np.array([[0.9, 0.2], [0.6, 0.7]])
    bits = np.array([[1, 0], [0, 1]])
    assert micro_f1(probs, bits) == pytest.approx(0.8)  # tp 2, fp 1, fn 0: 4 / 5
    assert micro_f1(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0  # nothing to find, nothing claimed
    assert r2_score(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0])) == pytest.approx(1 - 9 / 42)
    assert r2_score(np.ones(3), np.ones(3)) == 1.0 and r2_score(np.zeros(3), np.ones(3)) == 0.0

    acc, ce = score(Task.CLASSIFY, np.array([[0.7, 0.3], [0.4, 0.6]], np.float32), np.array([0, 0]))
    assert acc == 0.5 and ce == pytest.approx(-(np.log(0.7) + np.log(0.4)) / 2, rel=1e-6)
    f1, bce = score(Task.MULTILABEL, probs, bits)
    assert f1 == pytest.approx(0.8)
    assert bce == pytest.approx(-np.mean([np.log(0.9), np.log(0.8), np.log(0.4), np.log(0.7)]))
    r2, mse = score(Task.REGRESS, np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [4.0]]))
    assert (r2, mse) == (pytest.approx(1 - 9 / 42), pytest.approx(1 / 3))
    out = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    auc, _ = score(Task.AUTOENCODE, out, np.zeros((3, 2)), np.array([0, 1, 1]))  # errors 0, 1, 2
    assert auc == 1.0
    assert [metric_name(t) for t in Task] == ["accuracy", "micro_f1", "r2", "r2"]
    assert metric_name(Task.AUTOENCODE, has_anomaly_labels=True) == "auc"


# -- the task a model and its data imply ---------------------------------------------------------


def test_the_configs_task_names_are_the_tasks() -> None:
    assert set(get_args(TaskName)) == {t.value for t in Task}


def _graph(model: bytes) -> TfliteGraph:
    return TfliteGraph.from_bytes(model, source="model")


def test_default_tasks_follow_the_last_op_and_the_data() -> None:
    from tinyfed.models.zoo import get_zoo_model

    softmax = _graph(get_zoo_model("digits_cnn").int8_tflite())
    assert resolve_task(softmax, None, has_targets=True) is Task.CLASSIFY
    assert resolve_task(_graph(fc_multilabel_int8()), None, has_targets=True) is Task.MULTILABEL
    assert resolve_task(_graph(fc_regressor_int8()), None, has_targets=True) is Task.REGRESS
    ae = _graph(fc_autoencoder_int8())
    assert resolve_task(ae, None, has_targets=False) is Task.AUTOENCODE  # output size = input size, no y
    assert resolve_task(ae, None, has_targets=True) is Task.REGRESS
    assert resolve_task(ae, "regress", has_targets=True) is Task.REGRESS


@pytest.mark.parametrize(("model", "task", "targets", "problem"), [
    (fc_autoencoder_int8, "classify", False, "--task classify trains through SOFTMAX, but ae ends in FULLY_CONNECTED"),
    (fc_regressor_int8, "multilabel", True, "--task multilabel trains through LOGISTIC"),
    (fc_multilabel_int8, "autoencode", False, "8 input values and 4 output values"),
    (fc_regressor_int8, "regress", False, "--task regress needs targets"),
    (fc_regressor_int8, "segment", True, "unknown task 'segment'"),
])
def test_a_task_the_model_cannot_train_is_one_line_with_the_fix(model, task: str, targets: bool,
                                                                 problem: str) -> None:
    with pytest.raises(DatasetError, match=problem) as info:
        resolve_task(_graph(model()), task, has_targets=targets, source="ae")
    assert info.value.fix and "\n" not in str(info.value)


# -- the data each task takes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tasks")
    out = {}
    arrays = {"ae": anomaly_split(), "reg": _split(*regression_data(1300)), "ml": _split(*multilabel_data(1300))}
    for name, model in (("ae", fc_autoencoder_int8), ("reg", fc_regressor_int8), ("ml", fc_multilabel_int8)):
        (d / f"{name}.tflite").write_bytes(model())
        np.savez(d / f"{name}.npz", **arrays[name])
        out[name], out[f"{name}_npz"] = d / f"{name}.tflite", d / f"{name}.npz"
    return out


def _split(x: np.ndarray, y: np.ndarray, n_test: int = 300) -> dict[str, np.ndarray]:
    return {"x": x[n_test:], "y": y[n_test:], "x_test": x[:n_test], "y_test": y[:n_test]}


def test_each_tasks_data_loads_as_its_targets(files: dict[str, Path]) -> None:
    ae = user_run_data(str(files["ae"]), files["ae_npz"])
    assert ae.task is Task.AUTOENCODE and ae.y is None and ae.y_test is None and ae.metric == "auc"
    assert ae.anomaly_test is not None and ae.anomaly_test.dtype == bool and ae.anomaly_test.sum() == 100
    reg = user_run_data(str(files["reg"]), files["reg_npz"])
    assert reg.task is Task.REGRESS and reg.metric == "r2" and reg.y is not None
    assert reg.y.dtype == np.float32 and reg.y.shape == (1000, 2)
    ml = user_run_data(str(files["ml"]), files["ml_npz"])
    assert ml.task is Task.MULTILABEL and ml.metric == "micro_f1" and ml.y is not None and ml.y.shape == (1000, 4)
    # an autoencoder's test split without anomaly labels is scored by R^2 of the reconstruction
    plain = files["ae_npz"].with_name("ae_plain.npz")
    np.savez(plain, **{k: v for k, v in anomaly_split().items() if k != ANOMALY_KEY})
    assert user_run_data(str(files["ae"]), plain).metric == "r2"
    with pytest.raises(DatasetError, match="dirichlet partition skews classes"):
        reg.shares("dirichlet", 2, 0.5, 0)


@pytest.mark.parametrize(("name", "change", "problem"), [
    ("ml", lambda a: {**a, "y": a["y"] * 0.5}, "values other than 0 and 1"),
    ("ml", lambda a: {**a, "y": a["y"][:, :3]}, "needs a 0/1 row of 4 value"),
    ("reg", lambda a: {**a, "y_test": a["y_test"][:, :1]}, "needs a row of real values of 2"),
    ("reg", lambda a: {**a, "y": np.where(a["y"] > 0.9, np.nan, a["y"])}, "NaN or infinite"),
    ("ae", lambda a: {**a, ANOMALY_KEY: a[ANOMALY_KEY][:-1]}, f"{ANOMALY_KEY} has shape \\(399,\\)"),
    ("ae", lambda a: {**a, ANOMALY_KEY: a[ANOMALY_KEY] * 2}, "one 0/1 per test sample"),
    ("ae", lambda a: {**a, ANOMALY_KEY: np.zeros_like(a[ANOMALY_KEY])}, "needs both normal and anomalous"),
    ("ae", lambda a: {k: v for k, v in a.items() if k != "x_test"}, "has no x_test"),
])
def test_bad_task_data_is_one_line_naming_the_array(files: dict[str, Path], tmp_path: Path, name: str, change,
                                                    problem: str) -> None:
    arrays = dict(np.load(files[f"{name}_npz"]))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **change(arrays))
    with pytest.raises(DatasetError, match=problem) as info:
        user_run_data(str(files[name]), bad)
    assert info.value.fix and info.value.source == str(bad)


# -- the stop rule and the command line ----------------------------------------------------------


def test_the_target_is_the_tasks_metric() -> None:
    assert RunConfig().stop_target(Task.CLASSIFY, "accuracy") == 0.85
    assert RunConfig(target_accuracy=0.9).stop_target(Task.CLASSIFY, "accuracy") == 0.9
    assert RunConfig(target_metric=0.7).stop_target(Task.AUTOENCODE, "auc") == 0.7
    assert RunConfig().stop_target(Task.REGRESS, "r2") is None
    with pytest.raises(TinyfedError, match="this regress run is scored by r2") as info:
        RunConfig(target_accuracy=0.9).stop_target(Task.REGRESS, "r2")
    assert "--target-metric" in info.value.fix
    from tinyfed.errors import DataFileError
    from tinyfed.host.config import checked

    with pytest.raises(DataFileError, match="both target_accuracy and target_metric"):
        checked(RunConfig, {"target_accuracy": 0.9, "target_metric": 0.9}, "the command line")
    with pytest.raises(DataFileError, match="target_accuracy is the classification spelling"):
        checked(RunConfig, {"task": "autoencode", "target_accuracy": 0.9}, "run.toml")


@pytest.mark.parametrize(("extra", "problem"), [
    (["--target-accuracy", "0.9", "--target-metric", "0.9"], "give one of --target-accuracy and --target-metric"),
    (["--target-accuracy", "0.9", "--max-versions", "2"], "classification spelling of --target-metric; this "
                                                          "autoencode run is scored by auc"),
    ([], "has no target and no limit"),
    (["--task", "classify", "--max-versions", "2"], "--task classify trains through SOFTMAX"),
    (["--partition", "dirichlet", "--max-versions", "2"], "dirichlet partition skews classes"),
])
def test_option_errors_stop_the_run_before_any_board(files: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, extra: list[str],
                                                     problem: str) -> None:
    from tinyfed.commands import run as run_command

    def no_devices(*args, **kwargs):
        raise AssertionError("devices opened before the options were checked")

    monkeypatch.setattr(run_command, "open_devices", no_devices)
    args = ["run", "--simulate", "2", "--model", str(files["ae"]), "--data", str(files["ae_npz"]),
            "--partition", "iid", "--out", str(tmp_path / "run"), *extra]
    if "--partition" in extra:
        args.remove("iid")
        args.remove("--partition")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert problem in " ".join(result.output.split()), result.output
    assert not (tmp_path / "run").exists()


# -- an autoencoder trained federated -----------------------------------------------------------


def test_an_autoencoder_run_on_sim_boards_reports_auc_and_improves(files: dict[str, Path], tmp_path: Path) -> None:
    """FTTE on two sim:// boards, training data without y, a test split with injected anomalies:
    every evaluation is the ROC AUC of the reconstruction error (float master and int8 model),
    the AUC rises over 10 versions, and the run directory records the task for a resume."""
    config = tmp_path / "run.toml"
    config.write_text("[training]\nlr = 0.05\nepochs = 2\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "--simulate", "2", "--config", str(config), "--model", str(files["ae"]),
                                      "--data", str(files["ae_npz"]), "--partition", "iid", "--max-versions", "10",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["task"], summary["metric"], summary["versions"]) == ("autoencode", "auc", 10)
    assert summary["target_metric"] is None and "final_accuracy" not in summary
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    evaluations = [e for e in events if e["kind"] == "evaluation"]
    assert all(e["metric"] == "auc" and 0 <= e["auc"] <= 1 and 0 <= e["int8_auc"] <= 1 for e in evaluations)
    first, last = evaluations[0], evaluations[-1]
    # measured: float 0.44 -> 0.84..0.87, int8 0.44 -> 0.63 (the int8 model keeps the calibrated activation ranges)
    assert last["auc"] >= first["auc"] + 0.2, (first["auc"], last["auc"])
    assert last["int8_auc"] >= first["int8_auc"] + 0.05, (first["int8_auc"], last["int8_auc"])
    assert summary["final_auc"] == last["auc"] and summary["final_int8_auc"] == last["int8_auc"]
    assert 'task = "autoencode"' in (out / "config.toml").read_text()
    from tinyfed.host.checkpoint import read_checkpoint
    from tinyfed.host.events import summarize

    ck = read_checkpoint(out)
    assert ck is not None and ck.strategy_state["engine"]["task"] == "autoencode"
    records = summarize(events, target_metric=0.99)
    assert records["metric"] == "auc" and records["final_auc"] == last["auc"] and not records["reached_target"]

    # a resume trains the recorded task; the task itself cannot change
    refused = CliRunner().invoke(cli, ["run", "--resume", str(out), "--task", "regress"])
    assert refused.exit_code != 0 and "drop --task" in refused.output
    resumed = CliRunner().invoke(cli, ["run", "--resume", str(out), "--max-versions", "12", "--target-metric", "0.999",
                                       "--json"])
    assert resumed.exit_code == 1, resumed.output  # stopped at 12 versions, short of 0.999
    again = json.loads(resumed.stdout.strip().splitlines()[-1])  # stderr says why it exits 1
    assert (again["metric"], again["versions"], again["resumed_from"], again["target_metric"]) == ("auc", 12, 10, 0.999)


def test_the_float_and_int8_evaluators_agree(files: dict[str, Path]) -> None:
    """The host's two scores of one model, the float tail (FloatTail.forward) and the int8 model
    through LiteRT, agree up to the int8 rounding: R^2 and MSE of a regressor, ROC AUC of an
    autoencoder's reconstruction error."""
    from tinyfed.firmware_bridge.compile import local_data
    from tinyfed.host.export import evaluate_int8
    from tinyfed.host.setup import test_targets
    from tinyfed.planner import trainable as tfw
    from tinyfed.planner.dense import plan_dense
    from tinyfed.training import FloatTail
    from tinyfed.training.task import loss_of
    from tinyfed.training.vector import tail_evaluator

    scores = {}
    for name in ("reg", "ae"):
        model = files[name].read_bytes()
        data = user_run_data(str(files[name]), files[f"{name}_npz"])
        units = list(plan_dense(model, name).units)
        tail = FloatTail.from_fragments(model, tfw.encode(units), loss=loss_of(data.task))
        t_in = _graph(model).tensors[_graph(model).inputs[0]]
        scale, zp = float(t_in.scales[0]), int(t_in.zero_points[0])
        xq = local_data.quantize_inputs(data.x_test, scale, zp)
        targets = test_targets(data, scale, zp)
        shapes = [(len(u.channels), u.values_per_channel) for u in units]
        w0 = np.concatenate([u.values.ravel() for u in units]).astype(np.float32)
        evaluate = tail_evaluator(tail, shapes, tail.dequantize_input(xq), targets, task=data.task,
                                  anomaly=data.anomaly_test)
        scores[name] = (*evaluate(w0), *evaluate_int8(model, data.x_test, targets, task=data.task,
                                                      anomaly=data.anomaly_test))
    for metric, loss, metric_int8, loss_int8 in scores.values():
        assert abs(metric - metric_int8) < 0.02 and abs(loss - loss_int8) < 0.02 * loss, scores


@pytest.mark.parametrize(("name", "task", "metric", "gain"), [
    ("ml", "multilabel", "micro_f1", 0.2),  # measured 0.49 -> 0.84 (int8 0.82)
    ("reg", "regress", "r2", 0.5),  # measured -0.10 -> 0.96 (int8 0.57)
])
def test_multilabel_and_regression_runs_on_sim_boards_improve_their_metric(files: dict[str, Path], tmp_path: Path,
                                                                           name: str, task: str, metric: str,
                                                                           gain: float) -> None:
    config = tmp_path / "run.toml"
    config.write_text("[training]\nlr = 0.05\nepochs = 2\n")
    result = CliRunner().invoke(cli, ["run", "--simulate", "2", "--config", str(config), "--model", str(files[name]),
                                      "--data", str(files[f"{name}_npz"]), "--partition", "iid", "--max-versions", "10",
                                      "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert (summary["task"], summary["metric"], summary["versions"]) == (task, metric, 10)
    first = _first_evaluation(tmp_path / "run", metric)
    assert summary[f"final_{metric}"] >= first + gain, (first, summary[f"final_{metric}"])
    assert summary[f"final_int8_{metric}"] > first  # the deployable model moved the same way


def _first_evaluation(run_dir: Path, metric: str) -> float:
    """The metric of the run's first evaluation (version 0)."""
    first = next(json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                 if '"evaluation"' in line)
    assert first["version"] == 0 and first["metric"] == metric
    return float(first[metric])
