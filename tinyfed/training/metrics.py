"""How well the global model does its task: one "higher is better" metric and the loss, per task.

The host scores the float master (:func:`~tinyfed.training.vector.tail_evaluator`) and the
deployable int8 model (:func:`~tinyfed.host.export.evaluate_int8`) with these functions, so the
run's stop rule (``metric >= target``) means the same thing for every task:

=========== =============================================================================
task        metric
=========== =============================================================================
classify    ``accuracy``: the share of samples whose highest output is their label
multilabel  ``micro_f1``: F1 over every (sample, label) bit, an output >= 0.5 predicting 1
regress     ``r2``: coefficient of determination, pooled over the outputs
autoencode  ``auc``: ROC AUC of the reconstruction error against the test split's anomaly
            labels when it has them (anomalies are the positives), else ``r2`` of the
            reconstruction
=========== =============================================================================

The losses are those the devices train with (:func:`~tinyfed.training.task.loss_of`), as means
over the samples: cross-entropy of the label's probability; binary cross-entropy averaged over
the labels; squared error averaged over the output values. The host has only the outputs (the
int8 model's are probabilities), so its binary cross-entropy is taken from the probabilities
(floored away from 0 and 1), where the devices take it from the logits: the two differ only for
saturated outputs.
"""

from __future__ import annotations

import logging

import numpy as np

from tinyfed.training.task import Task

log = logging.getLogger(__name__)

__all__ = [
    "METRIC_LABELS",
    "accuracy",
    "metric_name",
    "micro_f1",
    "r2_score",
    "reconstruction_error",
    "roc_auc",
    "score",
]

#: What each metric's name means, for help texts and reports.
METRIC_LABELS = {
    "accuracy": "test accuracy",
    "micro_f1": "micro-averaged F1 at threshold 0.5",
    "r2": "R^2 (coefficient of determination)",
    "auc": "ROC AUC of the reconstruction error on the anomaly labels",
}

#: Probabilities are floored here before a logarithm, so a confident mistake costs a finite loss.
PROB_FLOOR = 1e-30


def metric_name(task: Task, *, has_anomaly_labels: bool = False) -> str:
    """The name of ``task``'s metric (a key of :data:`METRIC_LABELS`)."""
    if task is Task.CLASSIFY:
        return "accuracy"
    if task is Task.MULTILABEL:
        return "micro_f1"
    if task is Task.AUTOENCODE and has_anomaly_labels:
        return "auc"
    return "r2"


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows of ``probs`` (n, classes) whose argmax is the row's label."""
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean())


def micro_f1(probs: np.ndarray, bits: np.ndarray, threshold: float = 0.5) -> float:
    """F1 over all (sample, label) pairs, predicting 1 where ``probs >= threshold``.

    Micro-averaging counts every bit once, so a rare label weighs what its bits weigh. With no
    positive bit in the truth nor in the prediction nothing was missed: 1.0.
    """
    pred = np.asarray(probs) >= threshold
    truth = np.asarray(bits) > 0.5
    tp = int(np.count_nonzero(pred & truth))
    wrong = int(np.count_nonzero(pred ^ truth))  # false positives plus false negatives
    return 1.0 if tp == 0 and wrong == 0 else 2 * tp / (2 * tp + wrong)


def r2_score(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - SS_res / SS_tot over samples (rows) and outputs (columns), each column about its own mean.

    Pooling the sums weighs each output by its variance (an output that barely varies cannot
    swing the score). A constant target gives 1.0 when matched exactly, else 0.0.
    """
    p = np.asarray(pred, np.float64).reshape(len(pred), -1)
    t = np.asarray(target, np.float64).reshape(len(target), -1)
    ss_res = float(((t - p) ** 2).sum())
    ss_tot = float(((t - t.mean(axis=0)) ** 2).sum())
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative.

    Computed from ranks (Mann-Whitney U); tied scores share the average of their ranks, so a tie
    between a positive and a negative counts one half. Needs both classes present.
    """
    s = np.asarray(scores, np.float64).ravel()
    pos = np.asarray(positive).ravel().astype(bool)
    if len(s) != len(pos):
        raise ValueError(f"{len(s)} scores but {len(pos)} labels")
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC needs positives and negatives (got {n_pos} and {n_neg})")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # each run of equal scores gets the mean of the 1-based ranks it spans
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def reconstruction_error(output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-sample mean squared error between a reconstruction and its input: the anomaly score."""
    o = np.asarray(output, np.float64).reshape(len(output), -1)
    t = np.asarray(target, np.float64).reshape(len(target), -1)
    return ((o - t) ** 2).mean(axis=1)


def score(task: Task, outputs: np.ndarray, targets: np.ndarray, anomaly: np.ndarray | None = None,
          *, prob_floor: float = PROB_FLOOR) -> tuple[float, float]:
    """(metric, loss) of a model's ``outputs`` (n, ...) against ``targets`` for ``task``.

    ``targets`` are integer labels (classify), 0/1 rows (multilabel) or real values shaped like
    the outputs (regress; autoencode: the dequantized input). ``anomaly`` (autoencode only):
    one 0/1 per sample, 1 for an anomaly; the metric is then the ROC AUC of the reconstruction
    error. ``prob_floor`` bounds probabilities away from 0 and 1 in the log-losses.
    """
    n = len(outputs)
    out = np.asarray(outputs).reshape(n, -1)
    if task is Task.CLASSIFY:
        y = np.asarray(targets, np.int64).ravel()
        loss = float(-np.log(np.maximum(out[np.arange(n), y], prob_floor)).mean())
        return accuracy(out, y), loss
    t = np.asarray(targets, np.float64).reshape(n, -1)
    if t.shape != out.shape:
        raise ValueError(f"targets of shape {t.shape[1:]} for outputs of shape {out.shape[1:]}")
    if task is Task.MULTILABEL:
        p = np.clip(out.astype(np.float64), prob_floor, 1.0 - prob_floor)
        loss = float(-(t * np.log(p) + (1.0 - t) * np.log1p(-p)).mean(axis=1).mean())
        return micro_f1(out, t), loss
    loss = float(((out.astype(np.float64) - t) ** 2).mean())
    if task is Task.AUTOENCODE and anomaly is not None:
        return roc_auc(reconstruction_error(out, t), anomaly), loss
    return r2_score(out, t), loss
