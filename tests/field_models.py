"""Look-alikes of the field's int8 models (issue 13), built with Keras from their published descriptions.

The MLPerf Tiny reference architectures (DS-CNN keyword spotting, ResNet-8 image classification,
MobileNetV1 0.25 visual wake words, the ToyADMOS fully connected autoencoder) and TFLM's example
shapes (the hello_world sine regressor, the micro_speech depthwise model), plus a DS-CNN variant
whose pooling is GlobalAveragePooling2D (it converts to MEAN).

Each model has a seeded synthetic data set that it can learn: class-dependent low-frequency
patterns plus noise for the classifiers, ``y = sin(x)`` for the regressor, and for the
autoencoder normal samples on a low-dimensional manifold with a test split that carries injected
anomalies and their labels. :func:`build_field_model` pretrains the Keras model briefly on a small
part of its data (so the frozen layers compute useful features and the federated run has room to
improve) and converts it to full int8 with batch size 1. TensorFlow is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Names in the order the tests and the bench report them.
#: look-alikes that do not train on the nRF52840 (the autoencoder's 128 -> 640 layer makes a training
#: program larger than its 64 KiB program store), and the smallest real board the planner names instead
TOO_BIG_FOR_NRF52840 = {"toyadmos_ae": "rp2040"}
#: the board each look-alike's federated run uses: the nRF52840, or for the autoencoder a board whose
#: program store holds more of its last layer than the rp2040's bias-only w* (the esp32s3: 8 MiB flash)
RUN_BOARD = {"toyadmos_ae": "esp32s3"}


def run_config(name: str) -> str:
    """The ``[training]`` table of a look-alike's federated run: 5 local epochs of SGD at 0.05 (the
    defaults, 1 epoch at 0.01, need more than 10 versions on boards that hold 14 VWW images each); the
    autoencoder at 1.0 (its mean squared error over 640 outputs gives small gradients)."""
    return f"[training]\nepochs = 5\nlr = {1.0 if name == 'toyadmos_ae' else 0.05}\n"
FIELD_MODELS = ("ds_cnn", "resnet8", "mobilenet_vww", "toyadmos_ae", "sine", "micro_speech", "ds_cnn_gap")


def _keras() -> Any:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf.keras


# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------


def _bn_relu(layers: Any, x: Any, name: str, relu6: bool = False) -> Any:
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(6.0 if relu6 else None, name=f"{name}_relu")(x)


def ds_cnn(global_pool: bool = False) -> Any:
    """MLPerf Tiny KWS DS-CNN: 49x10 MFCC, a strided 10x4 conv, four depthwise-separable blocks, 12 classes."""
    keras = _keras()
    layers = keras.layers
    inp = keras.Input(shape=(49, 10, 1), batch_size=1, name="mfcc")
    x = layers.Conv2D(64, (10, 4), strides=2, padding="same", name="conv0")(inp)
    x = _bn_relu(layers, x, "conv0")
    for i in range(4):
        x = layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        x = _bn_relu(layers, x, f"dw{i}")
        x = layers.Conv2D(64, 1, name=f"pw{i}")(x)
        x = _bn_relu(layers, x, f"pw{i}")
    if global_pool:
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = layers.AveragePooling2D(pool_size=(int(x.shape[1]), int(x.shape[2])), name="avg")(x)
        x = layers.Flatten(name="flat")(x)
    out = layers.Dense(12, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="ds_cnn_gap" if global_pool else "ds_cnn")


def resnet8() -> Any:
    """MLPerf Tiny IC ResNet-8: 32x32x3, three residual stacks (16/32/64 filters), 1x1 projections, 10 classes."""
    keras = _keras()
    layers = keras.layers
    reg = keras.regularizers.l2(1e-4)
    inp = keras.Input(shape=(32, 32, 3), batch_size=1, name="image")
    x = layers.Conv2D(16, 3, padding="same", kernel_regularizer=reg, name="conv0")(inp)
    x = _bn_relu(layers, x, "conv0")
    for stack, (filters, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", kernel_regularizer=reg, name=f"s{stack}a")(x)
        y = _bn_relu(layers, y, f"s{stack}a")
        y = layers.Conv2D(filters, 3, padding="same", kernel_regularizer=reg, name=f"s{stack}b")(y)
        y = layers.BatchNormalization(momentum=0.9, name=f"s{stack}b_bn")(y)
        if stride != 1:
            x = layers.Conv2D(filters, 1, strides=stride, padding="same", kernel_regularizer=reg,
                              name=f"s{stack}proj")(x)
        x = layers.Add(name=f"s{stack}add")([x, y])
        x = layers.ReLU(name=f"s{stack}relu")(x)
    x = layers.AveragePooling2D(pool_size=int(x.shape[1]), name="avg")(x)
    x = layers.Flatten(name="flat")(x)
    out = layers.Dense(10, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="resnet8")


def mobilenet_vww() -> Any:
    """MobileNetV1 alpha 0.25 at 96x96x3 for visual wake words (2 classes), as in MLPerf Tiny VWW."""
    keras = _keras()
    layers = keras.layers
    alpha = 0.25
    inp = keras.Input(shape=(96, 96, 3), batch_size=1, name="image")
    x = layers.Conv2D(int(32 * alpha), 3, strides=2, padding="same", use_bias=False, name="conv0")(inp)
    x = _bn_relu(layers, x, "conv0", relu6=True)
    blocks = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
    for i, (filters, stride) in enumerate(blocks):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = _bn_relu(layers, x, f"dw{i}", relu6=True)
        x = layers.Conv2D(int(filters * alpha), 1, use_bias=False, name=f"pw{i}")(x)
        x = _bn_relu(layers, x, f"pw{i}", relu6=True)
    x = layers.AveragePooling2D(pool_size=int(x.shape[1]), name="avg")(x)
    x = layers.Flatten(name="flat")(x)
    out = layers.Dense(2, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="mobilenet_vww")


def toyadmos_ae() -> Any:
    """MLPerf Tiny AD autoencoder: 640 inputs, 4 x Dense 128 + BN + ReLU, bottleneck 8, mirror, Dense 640 linear."""
    keras = _keras()
    layers = keras.layers
    inp = keras.Input(shape=(640,), batch_size=1, name="features")
    x = inp
    for i, units in enumerate((128, 128, 128, 128, 8, 128, 128, 128, 128)):
        x = layers.Dense(units, name=f"fc{i}")(x)
        x = _bn_relu(layers, x, f"fc{i}")
    out = layers.Dense(640, name="fc_out")(x)
    return keras.Model(inp, out, name="toyadmos_ae")


def sine() -> Any:
    """TFLM hello_world: 1 -> Dense 16 relu -> Dense 16 relu -> Dense 1."""
    keras = _keras()
    layers = keras.layers
    inp = keras.Input(shape=(1,), batch_size=1, name="x")
    x = layers.Dense(16, activation="relu", name="fc0")(inp)
    x = layers.Dense(16, activation="relu", name="fc1")(x)
    out = layers.Dense(1, name="fc2")(x)
    return keras.Model(inp, out, name="sine")


def micro_speech() -> Any:
    """TFLM micro_speech tiny_conv: 49x40 features, one 10x8 stride-2 depthwise conv (8 filters), FC 4, softmax."""
    keras = _keras()
    layers = keras.layers
    inp = keras.Input(shape=(49, 40, 1), batch_size=1, name="features")
    x = layers.DepthwiseConv2D((10, 8), strides=2, depth_multiplier=8, padding="same", activation="relu",
                               name="dw")(inp)
    x = layers.Flatten(name="flat")(x)
    out = layers.Dense(4, activation="softmax", name="fc")(x)
    return keras.Model(inp, out, name="micro_speech")


# --------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------


@dataclass
class FieldData:
    """Training and test samples; ``y`` is None for the autoencoder (the target is the input).

    ``y_test`` holds class labels (classifiers), regression targets (sine) or anomaly labels
    (1 = anomaly) for the autoencoder.
    """

    x: np.ndarray
    y: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray

    def npz(self) -> dict[str, np.ndarray]:
        """The arrays as ``tinyfed run --data`` reads them: an autoencoder's test labels are ``y_test_anomaly``."""
        if self.y is None:
            return {"x": self.x, "x_test": self.x_test, "y_test_anomaly": self.y_test}
        return {"x": self.x, "y": self.y, "x_test": self.x_test, "y_test": self.y_test}


def _smooth_patterns(rng: np.random.Generator, n: int, shape: tuple[int, ...], coarse: int = 4) -> np.ndarray:
    """``n`` low-frequency random patterns at ``shape`` (h, w, c): coarse noise upsampled by repetition."""
    h, w, c = shape
    ch, cw = max(1, -(-h // coarse)), max(1, -(-w // coarse))
    small = rng.normal(0.0, 1.0, size=(n, ch, cw, c))
    big = small.repeat(coarse, axis=1).repeat(coarse, axis=2)[:, :h, :w, :]
    return big.astype(np.float32)


def classes_data(shape: tuple[int, ...], classes: int, *, seed: int, n_train: int, n_test: int,
                 signal: float = 0.6, coarse: int = 4) -> FieldData:
    """Class ``k`` = pattern ``k`` times a random gain plus white noise: separable by construction."""
    rng = np.random.default_rng(seed)
    patterns = _smooth_patterns(rng, classes, shape, coarse)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, size=n)
        gain = rng.uniform(0.5, 1.5, size=(n, 1, 1, 1)).astype(np.float32)
        x = signal * gain * patterns[y] + rng.normal(0.0, 1.0, size=(n, *shape)).astype(np.float32)
        return x.astype(np.float32), y.astype(np.int64)

    x, y = draw(n_train)
    xt, yt = draw(n_test)
    return FieldData(x, y, xt, yt)


def sine_data(*, seed: int, n_train: int = 2000, n_test: int = 400) -> FieldData:
    """``y = sin(x)`` for ``x`` uniform on [0, 2 pi), as in TFLM's hello_world."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(0.0, 2 * np.pi, size=(n, 1)).astype(np.float32)
        return x, np.sin(x).astype(np.float32)

    x, y = draw(n_train)
    xt, yt = draw(n_test)
    return FieldData(x, y, xt, yt)


def anomaly_data(*, seed: int, n_train: int = 2000, n_test: int = 400, latent: int = 4,
                 anomaly_fraction: float = 0.5, burst_std: float = 0.5) -> FieldData:
    """Normal samples on a ``latent``-dimensional manifold in 640-D plus small noise; test anomalies
    are normal samples with an off-manifold burst (``burst_std``) on a random band of 64 features."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(0.0, 1.0, size=(latent, 640)).astype(np.float32) / np.sqrt(latent)

    def normal(n: int) -> np.ndarray:
        z = rng.normal(0.0, 1.0, size=(n, latent)).astype(np.float32)
        return (np.tanh(z) @ basis + 0.1 * rng.normal(0.0, 1.0, size=(n, 640))).astype(np.float32)

    x = normal(n_train)
    xt = normal(n_test)
    labels = (rng.uniform(size=n_test) < anomaly_fraction).astype(np.int64)
    for i in np.flatnonzero(labels):
        start = int(rng.integers(0, 640 - 64))
        xt[i, start : start + 64] += rng.normal(0.0, burst_std, size=64).astype(np.float32)
    return FieldData(x, None, xt, labels)


# --------------------------------------------------------------------------------------
# The registry of look-alikes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """A look-alike: its builder, its data, its task and how briefly it is pretrained."""

    name: str
    build: Callable[[], Any]
    data: Callable[[], FieldData]
    task: str  # classify | regress | autoencode
    pretrain_samples: int  # how many training samples the Keras pretraining sees
    pretrain_epochs: int
    description: str = ""
    reset_head: bool = True  # re-initialize the last Dense after pretraining (the federated run retrains it)
    weights_of: str | None = None  # take the pretrained weights of this look-alike (same layers) instead


def _kws() -> FieldData:
    return classes_data((49, 10, 1), 12, seed=1, n_train=2400, n_test=480, signal=0.5)


def _spec_table() -> dict[str, FieldSpec]:
    """Pretraining: enough for useful frozen features; the classifiers' last Dense is then re-initialized,
    so their federated run starts near chance with features it can use. The sine and autoencoder models
    keep their (briefly) pretrained weights."""
    return {
        "ds_cnn": FieldSpec("ds_cnn", ds_cnn, _kws, "classify", 2400, 3, "MLPerf Tiny KWS DS-CNN"),
        "ds_cnn_gap": FieldSpec("ds_cnn_gap", lambda: ds_cnn(global_pool=True), _kws, "classify", 2400, 3,
                                "DS-CNN with GlobalAveragePooling2D (MEAN)", weights_of="ds_cnn"),
        "resnet8": FieldSpec("resnet8", resnet8,
                             lambda: classes_data((32, 32, 3), 10, seed=2, n_train=2000, n_test=400, signal=0.5),
                             "classify", 1000, 3, "MLPerf Tiny IC ResNet-8"),
        "mobilenet_vww": FieldSpec("mobilenet_vww", mobilenet_vww,
                                   lambda: classes_data((96, 96, 3), 2, seed=3, n_train=800, n_test=200,
                                                        signal=0.8, coarse=12),
                                   "classify", 800, 3, "MLPerf Tiny VWW MobileNetV1 0.25"),
        "toyadmos_ae": FieldSpec("toyadmos_ae", toyadmos_ae, lambda: anomaly_data(seed=4), "autoencode", 500, 3,
                                 "MLPerf Tiny AD ToyADMOS FC autoencoder", reset_head=False),
        "sine": FieldSpec("sine", sine, lambda: sine_data(seed=5), "regress", 2000, 4, "TFLM hello_world sine",
                          reset_head=False),
        "micro_speech": FieldSpec("micro_speech", micro_speech,
                                  lambda: classes_data((49, 40, 1), 4, seed=6, n_train=1600, n_test=400, signal=0.25),
                                  "classify", 400, 1, "TFLM micro_speech tiny_conv"),
    }


SPECS: dict[str, FieldSpec] = _spec_table()


@dataclass
class FieldModel:
    """A converted look-alike: its int8 bytes, its data and what building it cost."""

    spec: FieldSpec
    tflite: bytes
    data: FieldData
    params: int
    keras_metric_pretrained: float  # on the test split, float Keras model after the brief pretraining
    keras_metric_start: float  # what is converted: after the head reset (equal to the above without one)
    seconds: dict[str, float] = field(default_factory=dict)  # build, pretrain, convert


def _keras_metric(model: Any, spec: FieldSpec, data: FieldData) -> float:
    """Accuracy (classify), minus MSE (regress) or minus reconstruction MSE of normal test samples."""
    pred = model.predict(data.x_test, batch_size=64, verbose=0)
    if spec.task == "classify":
        return float(np.mean(pred.argmax(axis=1) == data.y_test))
    if spec.task == "regress":
        return -float(np.mean((pred - data.y_test) ** 2))
    normal = data.y_test == 0
    return -float(np.mean((pred[normal] - data.x_test[normal]) ** 2))


def local_samples_cap(data: FieldData, board: str = "nrf52840") -> int | None:
    """Most training samples one board's local-data store can hold (``--max-windows``), or None when a
    device's eighth of the data fits: the int8 sample plus a conservative 8 bytes of label or target each."""
    from tinyfed.boards import get_board

    sample_bytes = int(np.prod(data.x.shape[1:])) + 8
    cap = (get_board(board).data_store_bytes - 1024) // sample_bytes
    return cap if cap < -(-len(data.x) // 8) else None


@dataclass
class _Pretrained:
    weights: list[np.ndarray]
    data: FieldData
    metric: float
    params: int
    seconds: dict[str, float]


_PRETRAINED: dict[str, _Pretrained] = {}


def _pretrained(name: str) -> _Pretrained:
    """The look-alike's Keras weights after its brief pretraining (once per process)."""
    if name in _PRETRAINED:
        return _PRETRAINED[name]
    spec = SPECS[name]
    keras = _keras()
    keras.utils.set_random_seed(13)
    t0 = time.monotonic()
    data = spec.data()
    model = spec.build()
    t_build = time.monotonic() - t0
    if spec.task == "classify":
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        target = data.y
    else:
        model.compile(optimizer=keras.optimizers.Adam(3e-3 if spec.task == "regress" else 1e-3), loss="mse")
        target = data.y if spec.task == "regress" else data.x
    assert target is not None
    t1 = time.monotonic()
    n = spec.pretrain_samples
    model.fit(data.x[:n], target[:n], batch_size=32, epochs=spec.pretrain_epochs, verbose=0, shuffle=True)
    seconds = {"build": t_build, "pretrain": time.monotonic() - t1}
    _PRETRAINED[name] = _Pretrained(model.get_weights(), data, _keras_metric(model, spec, data),
                                    int(model.count_params()), seconds)
    return _PRETRAINED[name]


def qemu_fragment(tflite: bytes, slot_bytes: int) -> bytes:
    """The whole model, or when its blob exceeds a board's fragment slot (the autoencoder: 310 KB, the QEMU
    boards' slot 268 KB) the longest head that fits: what a plan freezes on such a board."""
    from tinyfed.firmware_bridge.compile.blob import compile_blob
    from tinyfed.models.tflite_graph import TfliteGraph

    if len(compile_blob(tflite)) <= slot_bytes:
        return tflite
    graph = TfliteGraph.from_bytes(tflite)
    for k in sorted(graph.cut_points(), reverse=True):
        head, _ = graph.split(k)
        if len(compile_blob(head)) <= slot_bytes:
            return head
    raise ValueError(f"no head of the model fits a {slot_bytes}-byte fragment slot")


#: Where converted look-alikes are kept between processes (pytest-xdist workers, the benches): the
#: repository's build/ directory, or ``TINYFED_FIELD_CACHE``. Keyed by this file's and the converter's
#: text, TensorFlow's version and the name, so an edit of either or another TensorFlow builds afresh.
FIELD_CACHE_ENV = "TINYFED_FIELD_CACHE"


def _cache_dir() -> Path:
    env = os.environ.get(FIELD_CACHE_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "build" / "field_models"


def _cache_key(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tf_version = version("tensorflow-cpu")
    except PackageNotFoundError:
        tf_version = version("tensorflow")
    import tinyfed.models.convert as convert

    text = Path(__file__).read_bytes() + Path(convert.__file__).read_bytes()
    return hashlib.sha256(text + tf_version.encode() + name.encode()).hexdigest()[:16]


def build_field_model(name: str) -> FieldModel:
    """The look-alike ``name`` built, pretrained and converted (:func:`_build_field_model`), once per
    machine: the first process to need it builds it under a file lock, the others read the result."""
    import fcntl

    if name in _BUILT:
        return _BUILT[name]
    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{name}-{_cache_key(name)}"
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building it: wait for its result
        meta = stem.with_suffix(".json")
        if meta.exists():
            facts = json.loads(meta.read_text())
            fm = FieldModel(SPECS[name], stem.with_suffix(".tflite").read_bytes(), SPECS[name].data(),
                            facts["params"], facts["pretrained"], facts["start"], facts["seconds"])
        else:
            fm = _build_field_model(name)
            stem.with_suffix(".tflite").write_bytes(fm.tflite)
            meta.write_text(json.dumps({"params": fm.params, "pretrained": fm.keras_metric_pretrained,
                                        "start": fm.keras_metric_start, "seconds": fm.seconds}))
    _BUILT[name] = fm
    return fm


_BUILT: dict[str, FieldModel] = {}


def _build_field_model(name: str) -> FieldModel:
    """Build, briefly pretrain and convert the look-alike ``name`` (seeded, deterministic on one machine).

    A look-alike with ``weights_of`` reuses that model's pretraining (its layers are the same), so
    the DS-CNN is trained once for both of its pooling variants.
    """
    from tinyfed.models.convert import convert_keras_to_int8

    spec = SPECS[name]
    pre = _pretrained(spec.weights_of or name)
    model = spec.build()
    model.set_weights(pre.weights)
    pretrained = _keras_metric(model, spec, pre.data) if spec.weights_of else pre.metric
    if spec.reset_head:
        _reset_last_dense(model, seed=17)
    start = _keras_metric(model, spec, pre.data) if spec.reset_head else pretrained
    t2 = time.monotonic()
    tflite = convert_keras_to_int8(model, pre.data.x[:64])
    seconds = {**pre.seconds, "convert": time.monotonic() - t2}
    if spec.weights_of:
        seconds["pretrain"] = 0.0
    return FieldModel(spec, tflite, pre.data, pre.params, pretrained, start, seconds)


def _reset_last_dense(model: Any, seed: int) -> None:
    """Fresh small weights and zero bias in the model's last Dense: useful frozen features, an untrained head."""
    keras = _keras()
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    kernel, bias = dense.get_weights()
    rng = np.random.default_rng(seed)
    limit = np.sqrt(6.0 / (kernel.shape[0] + kernel.shape[1]))
    dense.set_weights([rng.uniform(-limit, limit, size=kernel.shape).astype(np.float32), np.zeros_like(bias)])
