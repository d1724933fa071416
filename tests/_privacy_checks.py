"""The on-device DP mechanism checked through a board's link: the same assertions on a ``sim://``
board (tests/test_privacy.py) and on a QEMU board (tests/test_train_qemu.py), so the firmware's
clip and noise code (``firmware/src/train.c``, ``privatize_update``) runs in CI."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfed.firmware_bridge.link.errors import DeviceError
from tinyfed.firmware_bridge.link.framing import Status
from tinyfed.firmware_bridge.link.train_link import TrainParams


def _train(client, shapes, params: TrainParams) -> tuple[np.ndarray, float, float, float, float]:
    """The received delta, the TRAIN report's loss and variance, the update header's loss and variance."""
    report = client.train(params, timeout=600.0)
    update = client.read_update(report.update_bytes)
    return update.dense(shapes).astype(np.float64), report.loss, report.variance, update.loss, update.variance


def check_dp_mechanism(client, case, version: int) -> None:
    """``client``'s board holds ``case``'s fragment, program and local data, and w* at ``version``.

    1. Without DP: the update's norm N. 2. DP with clip C = N / 4 and no noise: the same direction,
    norm C up to int8 rounding, loss and variance withheld (0). 3. DP with noise sigma = 2 on the
    same training (same seed): what it adds is zero-mean with standard deviation sigma * C, and
    Gaussian (two-sigma tail share). 4. EVALUATE and TRAIN without DP are refused until new data."""
    shapes = case.unit_shapes
    base = dict(version=version, epochs=1, batch_size=8, lr=0.05, seed=5, max_samples=32)
    raw, *_ = _train(client, shapes, TrainParams(**base))
    norm = float(np.linalg.norm(raw))
    assert norm > 0
    clip = norm / 4
    d = raw.size

    clipped, r_loss, r_var, u_loss, u_var = _train(client, shapes, TrainParams(**base, dp_clip=clip, dp_noise=0.0))
    assert (r_loss, r_var, u_loss, u_var) == (0.0, 0.0, 0.0, 0.0)  # withheld: only the delta leaves
    step = np.abs(clipped).max() / 127  # int8 rounding: at most half a step per value (per-tensor scales <= max)
    slack = np.sqrt(d) * step / 2
    assert abs(np.linalg.norm(clipped) - clip) <= slack + 1e-6 * clip
    assert np.dot(clipped, raw) / (np.linalg.norm(clipped) * norm) > 0.99  # the same update, scaled down

    sigma = 2.0
    noised, *_ = _train(client, shapes, TrainParams(**base, dp_clip=clip, dp_noise=sigma))
    noise = noised - clipped
    std = sigma * clip
    # sample std of d normals: relative error ~ 1 / sqrt(2d) (< 1% here); 5% is > 5 standard errors
    assert noise.std() == pytest.approx(std, rel=0.05)
    assert abs(noise.mean()) < 5 * std / np.sqrt(d)
    tail = float(np.mean(np.abs(noise) > 2 * std))  # 4.55% for a Gaussian; a uniform's would be 0
    assert 0.03 < tail < 0.06
    assert np.abs(noise).max() < 7 * std  # P(|z| > 7) ~ 3e-12 per value

    for refused in (lambda: client.evaluate(), lambda: client.train(TrainParams(**base))):
        with pytest.raises(DeviceError) as e:
            refused()
        assert e.value.status == Status.BAD_ARGUMENT and "differential privacy" in e.value.message
