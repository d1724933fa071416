"""Deterministic pretraining of the zoo models on their server-held proxy split.

    python -m tinyfed.models.pretrain [--model NAME] [--out DIR] [--check]

Writes ``<out>/<name>.npz`` (default ``tinyfed/models/weights``): the ``model.get_weights()``
arrays in order (``w000``, ``w001``, ...), the per-channel input standardization
(``norm_mean``, ``norm_std``) and a JSON ``meta`` string.  ``--check`` retrains into a
temporary directory and compares with the committed files (exit status 1 on a mismatch).

Determinism: fixed seeds, ``tf.config.experimental.enable_op_determinism()``, one intra-
and one inter-op thread and oneDNN disabled -- all set before TensorFlow runs any op.
Results are bit-reproducible on the same TensorFlow build and CPU family.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tinyfed.errors import TinyfedError
from tinyfed.models.zoo import WEIGHTS_DIR, ZOO_NAMES, ZooModel, get_zoo_model, weights_to_npz_bytes

__all__ = [
    "augment_imu", "check", "compare_weight_files", "configure_determinism", "main", "pretrain", "save_pretrained"
]

CHECK_TOLERANCE = 1e-6
_configured_seed: int | None = None


def configure_determinism(seed: int) -> Any:
    """Seed everything and make TensorFlow deterministic and single-threaded.

    Must run before TensorFlow executes its first op for the thread settings to apply; in a
    process where TF already ran, those settings are left as they are.  Returns ``tf``.
    """
    global _configured_seed
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["TF_DETERMINISTIC_OPS"] = "1"
    os.environ["PYTHONHASHSEED"] = str(seed)
    import tensorflow as tf

    if _configured_seed is None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TF already initialized in this process; keep its thread pools
        tf.config.experimental.enable_op_determinism()
    import keras

    keras.utils.set_random_seed(seed)
    _configured_seed = seed
    return tf


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    probs = model.predict(x, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == y))


def _random_rotations(rng: np.random.Generator, n: int, max_degrees: float) -> np.ndarray:
    """``n`` rotation matrices about random axes by angles uniform in +-max_degrees."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    theta = np.deg2rad(rng.uniform(-max_degrees, max_degrees, size=n))
    k = np.zeros((n, 3, 3))
    k[:, 0, 1], k[:, 0, 2] = -axis[:, 2], axis[:, 1]
    k[:, 1, 0], k[:, 1, 2] = axis[:, 2], -axis[:, 0]
    k[:, 2, 0], k[:, 2, 1] = -axis[:, 1], axis[:, 0]
    return np.eye(3)[None] + np.sin(theta)[:, None, None] * k + (1 - np.cos(theta))[:, None, None] * (k @ k)


def augment_imu(rng: np.random.Generator, x: np.ndarray, std: np.ndarray, cfg: dict[str, float]) -> np.ndarray:
    """Raw IMU windows (..., 6) -> the same rotated (one rotation for the accelerometer and
    the gyroscope of a window: a slightly different watch placement), scaled per channel and
    with a little Gaussian noise (in units of the channel's standard deviation)."""
    out = np.array(x, dtype=np.float64)
    n = len(out)
    deg = float(cfg.get("rotate_degrees", 0.0))
    if deg > 0:
        rot = _random_rotations(rng, n, deg)
        for lo in (0, 3):
            out[..., lo : lo + 3] = np.einsum("nij,n...j->n...i", rot, out[..., lo : lo + 3])
    scale = float(cfg.get("scale", 0.0))
    if scale > 0:
        out *= rng.uniform(1 - scale, 1 + scale, size=(n,) + (1,) * (out.ndim - 2) + (out.shape[-1],))
    noise = float(cfg.get("noise", 0.0))
    if noise > 0:
        out += rng.normal(0.0, noise, size=out.shape) * np.asarray(std, np.float64)
    return out


def pretrain(zm: ZooModel, *, verbose: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
    """Train ``zm`` on its proxy split; returns (weights, norm_mean, norm_std, meta).

    Adam with a cosine-decayed learning rate; for ``har_cnn`` each epoch sees a fresh,
    seeded augmentation of the proxy windows (``train_config["augment"]``).
    """
    cfg = zm.train_config
    seed = int(cfg["seed"])
    epochs = int(cfg["epochs"])
    batch_size = int(cfg["batch_size"])
    aug_cfg = dict(cfg.get("augment") or {})
    configure_determinism(seed)
    import keras

    t0 = time.perf_counter()
    mean, std = zm.compute_normalization()
    raw_proxy = zm.raw_proxy_split()
    y = raw_proxy.y

    def standardize(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    x = standardize(raw_proxy.x)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = zm.build(batch_size=None)
    steps = epochs * int(np.ceil(len(y) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(float(cfg["learning_rate"]), decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    if aug_cfg:
        for epoch in range(epochs):
            xa = standardize(augment_imu(rng, raw_proxy.x, std, aug_cfg))
            model.fit(xa, y, initial_epoch=epoch, epochs=epoch + 1, batch_size=batch_size, shuffle=True,
                      verbose=verbose)
    else:
        model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose)
    train_seconds = time.perf_counter() - t0

    raw_test = zm.raw_test_split()  # standardized with the fresh statistics
    x_test = standardize(raw_test.x)
    meta = {
        "model": zm.name,
        "dataset": zm.dataset,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": float(cfg["learning_rate"]),
        "schedule": "cosine",
        "augment": aug_cfg,
        "seed": seed,
        "proxy_users": [int(u) for u in raw_proxy.users()],
        "proxy_samples": int(len(y)),
        "test_samples": int(len(raw_test)),
        "proxy_accuracy": round(_accuracy(model, x, y), 6),
        "test_accuracy": round(_accuracy(model, x_test, raw_test.y), 6),
        "parameters": int(model.count_params()),
        "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
        "keras": _version("keras"),
    }
    if verbose:
        print(f"{zm.name}: trained in {train_seconds:.1f} s", file=sys.stderr)
    return [np.asarray(w) for w in model.get_weights()], mean, std, meta


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def save_pretrained(zm: ZooModel, out_dir: Path, *, verbose: int = 0) -> tuple[Path, dict[str, Any]]:
    """Pretrain ``zm`` and write ``out_dir/<name>.npz``; returns (path, meta)."""
    weights, mean, std, meta = pretrain(zm, verbose=verbose)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{zm.name}.npz"
    tmp = path.with_suffix(".npz.tmp")
    tmp.write_bytes(weights_to_npz_bytes(weights, mean, std, meta))
    os.replace(tmp, path)
    return path, meta


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "meta"}


def compare_weight_files(committed: Path, fresh: Path, tol: float = CHECK_TOLERANCE) -> list[str]:
    """Differences between two weight files (empty list when they agree within ``tol``)."""
    if not committed.is_file():
        return [f"{committed} does not exist"]
    a, b = _load_arrays(committed), _load_arrays(fresh)
    problems = []
    if sorted(a) != sorted(b):
        problems.append(f"array names differ: {sorted(a)} vs {sorted(b)}")
    for k in sorted(set(a) & set(b)):
        if a[k].shape != b[k].shape:
            problems.append(f"{k}: shape {a[k].shape} vs {b[k].shape}")
            continue
        diff = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) if a[k].size else 0.0
        if not diff <= tol:
            problems.append(f"{k}: max abs difference {diff:.3g} > {tol:g}")
    return problems


def check(names: list[str], weights_dir: Path = WEIGHTS_DIR, *, verbose: int = 0) -> dict[str, list[str]]:
    """Retrain ``names`` into a temp dir and compare with ``weights_dir``; name -> problems."""
    out: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="tinyfed-pretrain-") as tmp:
        for name in names:
            fresh, _ = save_pretrained(get_zoo_model(name), Path(tmp), verbose=verbose)
            out[name] = compare_weight_files(weights_dir / f"{name}.npz", fresh)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyfed.models.pretrain",
        description="Deterministically pretrain the zoo models on their proxy split.",
    )
    parser.add_argument("--model", action="append", choices=ZOO_NAMES, help="model to train (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help=f"output directory (default: {WEIGHTS_DIR})")
    parser.add_argument("--check", action="store_true",
                        help="retrain in a temp dir and compare with the files in --out")
    parser.add_argument("-v", "--verbose", action="store_true", help="show training progress")
    args = parser.parse_args(argv)
    names = args.model or list(ZOO_NAMES)
    verbose = 2 if args.verbose else 0
    try:
        if args.check:
            results = check(names, args.out, verbose=verbose)
            bad = {n: p for n, p in results.items() if p}
            for n in names:
                status = "MISMATCH" if results[n] else "ok"
                print(f"{n}: {status}")
                for p in results[n]:
                    print(f"  {p}")
            if bad:
                print(
                    "the committed weights are not reproduced; if the training code changed on purpose, "
                    "run python -m tinyfed.models.pretrain and commit tinyfed/models/weights/",
                    file=sys.stderr,
                )
                return 1
            return 0
        for n in names:
            t0 = time.perf_counter()
            path, meta = save_pretrained(get_zoo_model(n), args.out, verbose=verbose)
            print(
                f"{n}: wrote {path} in {time.perf_counter() - t0:.1f} s "
                f"(proxy acc {meta['proxy_accuracy']:.4f}, test acc {meta['test_accuracy']:.4f}, "
                f"{meta['parameters']} params)"
            )
        return 0
    except TinyfedError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
