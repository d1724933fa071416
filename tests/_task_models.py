"""Small full-int8 models and learnable synthetic data for the tasks beyond classification.

- an FC autoencoder (16 -> 8 -> 3 -> 8 -> 16, linear output) and data on a 3-dimensional
  subspace, with anomalies drawn off it at the same norm (only the reconstruction can tell them);
- an FC regressor (1 -> 16 -> 16 -> 1, TFLM's sine example shape) on y = sin(x);
- a multi-label model (8 -> 16 -> 4, sigmoid) whose 4 bits are signs of fixed projections.

The Keras models are trained briefly so the int8 calibration sees realistic ranges but leave
room for a federated run to improve them. TensorFlow is imported lazily; the builders are cached
per session.
"""

from __future__ import annotations

import functools

import numpy as np

AE_DIM, AE_CODE = 16, 3


def _keras():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf.keras


def autoencoder_data(n_train: int = 1200, n_test: int = 400, anomalies: int = 100, seed: int = 0) -> dict:
    """x on a random 3-D subspace plus noise; ``y_test_anomaly`` marks test samples drawn off it."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(AE_DIM, AE_CODE)))[0].T * 2.0  # (3, 16), rows of norm 2

    def normal(n: int) -> np.ndarray:
        return (rng.normal(size=(n, AE_CODE)) @ basis + 0.05 * rng.normal(size=(n, AE_DIM))).astype(np.float32)

    x, x_test = normal(n_train), normal(n_test)
    off = rng.normal(size=(anomalies, AE_DIM))
    off -= (off @ np.linalg.pinv(basis)) @ basis  # the part off the subspace
    norms = np.linalg.norm(x_test[:anomalies], axis=1, keepdims=True)
    x_test[:anomalies] = (off / np.linalg.norm(off, axis=1, keepdims=True) * norms).astype(np.float32)
    flags = np.zeros(n_test, np.int64)
    flags[:anomalies] = 1
    order = rng.permutation(n_test)
    return {"x": x, "x_test": x_test[order], "y_test_anomaly": flags[order]}


def sine_data(n_train: int = 1000, n_test: int = 300, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2 * np.pi, size=(n_train + n_test, 1)).astype(np.float32)
    y = np.sin(x).astype(np.float32)
    return {"x": x[:n_train], "y": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}


def multilabel_data(n_train: int = 1000, n_test: int = 300, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 4))
    x = rng.normal(size=(n_train + n_test, 8)).astype(np.float32)
    y = (x @ w > 0).astype(np.float32)
    return {"x": x[:n_train], "y": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}


def _fit_and_convert(model, x: np.ndarray, y: np.ndarray, loss: str, epochs: int) -> bytes:
    from tinyfed.models.convert import convert_keras_to_int8

    model.compile(optimizer=_keras().optimizers.Adam(0.01), loss=loss)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=False)
    return convert_keras_to_int8(model, x[:200])


@functools.cache
def autoencoder_int8(epochs: int = 1) -> bytes:
    keras = _keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(AE_DIM,), batch_size=1)
    h = keras.layers.Dense(8, activation="relu")(inp)
    h = keras.layers.Dense(AE_CODE, activation="relu")(h)
    h = keras.layers.Dense(8, activation="relu")(h)
    out = keras.layers.Dense(AE_DIM)(h)
    x = autoencoder_data()["x"]
    return _fit_and_convert(keras.Model(inp, out), x, x, "mse", epochs)


@functools.cache
def sine_int8(epochs: int = 2) -> bytes:
    keras = _keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(1,), batch_size=1)
    h = keras.layers.Dense(16, activation="relu")(inp)
    h = keras.layers.Dense(16, activation="relu")(h)
    out = keras.layers.Dense(1)(h)
    d = sine_data()
    return _fit_and_convert(keras.Model(inp, out), d["x"], d["y"], "mse", epochs)


@functools.cache
def multilabel_int8(epochs: int = 1) -> bytes:
    keras = _keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(8,), batch_size=1)
    h = keras.layers.Dense(16, activation="relu")(inp)
    out = keras.layers.Dense(4, activation="sigmoid")(h)
    d = multilabel_data()
    return _fit_and_convert(keras.Model(inp, out), d["x"], d["y"], "binary_crossentropy", epochs)
