"""Small int8 models and learnable data for the tasks beyond softmax classification
(tests/test_train_tasks.py).

``fc_autoencoder_int8()``: 24 -> 12 -> 6 -> 12 -> 24 FULLY_CONNECTED (ReLU inside, a linear
output), no SOFTMAX: the ToyADMOS autoencoder's shape, scaled down. ``fc_regressor_int8()``:
4 -> 16 -> 16 -> 2 with a linear output, like TFLM's sine regressor with two outputs.
``fc_classifier_int8()``: 6 -> 8 -> 4 SOFTMAX, to train a softmax output with the MSE loss.
The data: ``autoencoder_data`` lies near a 3-dimensional subspace (learnable by a 6-unit
bottleneck); ``regression_data`` is a smooth function of the inputs. TensorFlow is imported
lazily; the models are cached per process.
"""

from __future__ import annotations

import functools

import numpy as np
from engine_models import _convert, _tf

AE_INPUT = 24
REG_INPUT, REG_OUTPUT = 4, 2


@functools.cache
def fc_autoencoder_int8() -> bytes:
    keras = _tf().keras
    keras.utils.set_random_seed(21)
    inp = keras.Input(shape=(AE_INPUT,), batch_size=1, name="x")
    h = keras.layers.Dense(12, activation="relu", name="enc1")(inp)
    h = keras.layers.Dense(6, activation="relu", name="code")(h)
    h = keras.layers.Dense(12, activation="relu", name="dec1")(h)
    out = keras.layers.Dense(AE_INPUT, name="recon")(h)
    return _convert(keras.Model(inp, out), (AE_INPUT,))


@functools.cache
def fc_regressor_int8() -> bytes:
    keras = _tf().keras
    keras.utils.set_random_seed(22)
    inp = keras.Input(shape=(REG_INPUT,), batch_size=1, name="x")
    h = keras.layers.Dense(16, activation="relu", name="fc1")(inp)
    h = keras.layers.Dense(16, activation="relu", name="fc2")(h)
    out = keras.layers.Dense(REG_OUTPUT, name="y")(h)
    return _convert(keras.Model(inp, out), (REG_INPUT,))


@functools.cache
def fc_classifier_int8() -> bytes:
    keras = _tf().keras
    keras.utils.set_random_seed(23)
    inp = keras.Input(shape=(6,), batch_size=1, name="x")
    h = keras.layers.Dense(8, activation="relu", name="fc1")(inp)
    out = keras.layers.Dense(4, activation="softmax", name="probs")(h)
    return _convert(keras.Model(inp, out), (6,))


def autoencoder_data(n: int, seed: int = 0) -> np.ndarray:
    """Float windows near a 3-dimensional subspace of R^24 (unit-ish scale)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(0.0, 0.6, size=(3, AE_INPUT))
    return (rng.normal(0.0, 1.0, size=(n, 3)) @ basis + rng.normal(0.0, 0.05, size=(n, AE_INPUT))).astype(np.float32)


def regression_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs in [-2, 2]^4 and two smooth targets of them."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=(n, REG_INPUT)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0]) + 0.5 * x[:, 1], 0.3 * x[:, 2] - 0.2 * x[:, 3] * x[:, 0]], axis=1)
    return x, y.astype(np.float32)


@functools.cache
def fc_multilabel_int8() -> bytes:
    """8 -> 16 -> 4 with a sigmoid output (FULLY_CONNECTED + LOGISTIC): four labels at once."""
    keras = _tf().keras
    keras.utils.set_random_seed(24)
    inp = keras.Input(shape=(8,), batch_size=1, name="x")
    h = keras.layers.Dense(16, activation="relu", name="fc1")(inp)
    out = keras.layers.Dense(4, activation="sigmoid", name="labels")(h)
    return _convert(keras.Model(inp, out), (8,))


def multilabel_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of R^8 and four 0/1 labels: the signs of fixed projections."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, size=(n, 8)).astype(np.float32)
    return x, (x @ np.random.default_rng(98).normal(size=(8, 4)) > 0).astype(np.float32)


def anomaly_split(n_train: int = 1200, n_test: int = 400, anomalies: int = 100, seed: int = 0) -> dict:
    """An autoencoder's NPZ arrays: ``x`` (no ``y``), ``x_test`` and ``y_test_anomaly``.

    The anomalies replace test samples by vectors of the same norm orthogonal to the normal
    data's 3-dimensional subspace (its top principal directions), so only the reconstruction
    error tells them apart, not their size."""
    x = autoencoder_data(n_train, seed)
    x_test = autoencoder_data(n_test, seed + 1)
    basis = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)[2][:3]  # orthonormal rows
    rng = np.random.default_rng(seed + 2)
    off = rng.normal(size=(anomalies, AE_INPUT))
    off -= off @ basis.T @ basis
    norms = np.linalg.norm(x_test[:anomalies], axis=1, keepdims=True)
    x_test[:anomalies] = (off / np.linalg.norm(off, axis=1, keepdims=True) * norms).astype(np.float32)
    flags = np.zeros(n_test, np.int64)
    flags[:anomalies] = 1
    order = rng.permutation(n_test)
    return {"x": x, "x_test": x_test[order], "y_test_anomaly": flags[order]}
