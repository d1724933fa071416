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
