"""What a model is trained to do: the task, its loss on the device and its metric on the host.

A task follows from the model's last op and the data, and the user can name it (``--task``):

========== ===================== ==================================================================
task       loss (device, host)   targets
========== ===================== ==================================================================
classify   softmax cross-entropy an integer class per sample; the last op is SOFTMAX
multilabel sigmoid binary CE     a 0/1 vector per sample (one bit per output); the last op is LOGISTIC
regress    mean squared error    a real-valued vector per sample, shaped like the model's output
autoencode mean squared error    the model's own input (no ``y``); the output has the input's size
========== ===================== ==================================================================

Every task's metric is "higher is better", so one stop rule (``metric >= target``) serves all.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Loss", "Task", "default_task", "implied_task", "loss_of"]


class Task(StrEnum):
    """The learning task of a run."""

    CLASSIFY = "classify"
    MULTILABEL = "multilabel"
    REGRESS = "regress"
    AUTOENCODE = "autoencode"


class Loss(StrEnum):
    """The loss the training engines (C firmware, numpy twin, FloatTail) compute on the tail's output."""

    SOFTMAX_CE = "softmax_ce"  # the last op is SOFTMAX; the gradient enters below it (p - onehot)
    SIGMOID_BCE = "sigmoid_bce"  # the last op is LOGISTIC; the gradient enters below it (p - y)
    MSE = "mse"  # any last op; the gradient 2 (out - target) / size enters at the output


def loss_of(task: Task) -> Loss:
    """The loss a task trains with."""
    return {Task.CLASSIFY: Loss.SOFTMAX_CE, Task.MULTILABEL: Loss.SIGMOID_BCE}.get(task, Loss.MSE)


def implied_task(last_op: str) -> Task:
    """The task a model's last op implies when the data is not known: classify after SOFTMAX,
    multilabel after LOGISTIC, else regress (an autoencoder trains with the same loss)."""
    return {"SOFTMAX": Task.CLASSIFY, "LOGISTIC": Task.MULTILABEL}.get(last_op, Task.REGRESS)


def default_task(last_op: str, *, has_targets: bool, output_size: int, input_size: int) -> Task:
    """The task a model and its data imply when the user names none.

    SOFTMAX -> classify, LOGISTIC -> multilabel; otherwise regress when the data carries targets,
    autoencode when it does not and the output has as many values as the input.
    """
    task = implied_task(last_op)
    if task is not Task.REGRESS or has_targets or output_size != input_size:
        return task
    return Task.AUTOENCODE
