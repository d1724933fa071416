"""NHWC sliding windows shared by the convolution and pooling ops.

Int8 twin: the padded input and each kernel tap's strided view (TFLM's index arithmetic).
Float tail: padding, taps, im2col patches and their adjoints (scatter-adds in a fixed tap order,
which fixes the float sums), and average pooling's window counts.
"""

from __future__ import annotations

import functools

import numpy as np

from tinyfed.firmware_bridge.compile.layout import window_geometry

__all__ = ["int8_tap", "pad_int8", "padded", "patches", "pool_counts", "scatter_taps", "taps", "unpatch"]

Geometry = tuple[tuple[int, ...], int, int, int, int]  # padded shape, pad top, pad left, height, width


# --------------------------------------------------------------------------------------
# Int8 twin
# --------------------------------------------------------------------------------------


def int8_tap(xp: np.ndarray, fy: int, fx: int, dil: tuple[int, int], stride: tuple[int, int], oh: int,
             ow: int) -> np.ndarray:
    """The (N, OH, OW, C) padded input under tap (fy, fx): TFLM's ``in = out*stride - pad + dil*f``."""
    y0 = fy * dil[0]
    x0 = fx * dil[1]
    return xp[:, y0 : y0 + (oh - 1) * stride[0] + 1 : stride[0], x0 : x0 + (ow - 1) * stride[1] + 1 : stride[1], :]


def pad_int8(x: np.ndarray, pad: tuple[int, int], need: tuple[int, int], fill) -> np.ndarray:
    """``x`` (N, H, W, C) placed at ``pad`` in a ``fill``ed array at least ``need`` high and wide."""
    n, h, w, c = x.shape
    ph = max(h + pad[0], need[0])
    pw = max(w + pad[1], need[1])
    xp = np.full((n, ph, pw, c), fill, dtype=x.dtype)
    xp[:, pad[0] : pad[0] + h, pad[1] : pad[1] + w, :] = x
    return xp


# --------------------------------------------------------------------------------------
# Float tail
# --------------------------------------------------------------------------------------


def _window(k: int, step: int, out: int) -> slice:
    """The input positions that tap ``k`` (already times the dilation) reads for ``out`` outputs."""
    return slice(k, k + step * (out - 1) + 1, step)


def padded(x: np.ndarray, kh: int, kw: int, s: tuple[int, int], d: tuple[int, int], padding: str,
           fill: float) -> tuple[np.ndarray, int, int, Geometry]:
    """``x`` padded for the window (itself when no padding is needed), and the geometry."""
    n, h, w, c = x.shape
    oh, pt, pb = window_geometry(h, kh, s[0], d[0], padding)
    ow, pl, pr = window_geometry(w, kw, s[1], d[1], padding)
    if pt or pb or pl or pr:
        # np.pad's generic machinery costs more than the copy itself at these sizes.
        xp = np.full((n, h + pt + pb, w + pl + pr, c), fill, dtype=x.dtype)
        xp[:, pt : pt + h, pl : pl + w, :] = x
    else:
        xp = x
    return xp, oh, ow, (xp.shape, pt, pl, h, w)


def taps(xp: np.ndarray, kh: int, kw: int, s: tuple[int, int], d: tuple[int, int], oh: int,
         ow: int) -> list[np.ndarray]:
    """The (N, OH, OW, C) input under each kernel tap, row-major over (KH, KW): views of ``xp``."""
    return [xp[:, _window(i * d[0], s[0], oh), _window(j * d[1], s[1], ow), :] for i in range(kh) for j in range(kw)]


def patches(x: np.ndarray, kh: int, kw: int, s: tuple[int, int], d: tuple[int, int], padding: str,
            fill: float = 0.0) -> tuple[np.ndarray, Geometry]:
    """im2col: (N, OH, OW, KH, KW, C) patches of a padded NHWC input, and the geometry."""
    xp, oh, ow, geom = padded(x, kh, kw, s, d, padding, fill)
    n, c = x.shape[0], x.shape[3]
    cols = np.empty((n, oh, ow, kh, kw, c), dtype=x.dtype)
    if kh == 1 and d[1] == 1 and xp.flags.c_contiguous:
        # A one-row kernel reads KW*C consecutive values of a contiguous input per output:
        # copy those runs at once (one tap at a time copies runs of only C values).
        st = xp.strides
        rows = np.lib.stride_tricks.as_strided(xp, (n, oh, ow, kw * c), (st[0], st[1] * s[0], st[2] * s[1], st[3]),
                                               writeable=False)
        cols.reshape(n, oh, ow, kw * c)[...] = rows
        return cols, geom
    for k, tap in enumerate(taps(xp, kh, kw, s, d, oh, ow)):
        cols[:, :, :, k // kw, k % kw, :] = tap
    return cols, geom


def scatter_taps(grads: list[np.ndarray], kh: int, kw: int, geom: Geometry, s: tuple[int, int],
                 d: tuple[int, int]) -> np.ndarray:
    """Adjoint of :func:`taps`: add each tap's (N, OH, OW, C) gradient back to the input,
    taps in row-major order (the order fixes the float sums)."""
    xp_shape, pt, pl, h, w = geom
    dxp = np.zeros(xp_shape, dtype=grads[0].dtype)
    oh, ow = grads[0].shape[1:3]
    for k, g in enumerate(grads):
        i, j = divmod(k, kw)
        dxp[:, _window(i * d[0], s[0], oh), _window(j * d[1], s[1], ow), :] += g
    return dxp[:, pt : pt + h, pl : pl + w, :]


def unpatch(dcols: np.ndarray, geom: Geometry, s: tuple[int, int], d: tuple[int, int]) -> np.ndarray:
    """Adjoint of :func:`patches`: scatter-add patch gradients back to the input."""
    _, _, _, kh, kw, _ = dcols.shape
    # Tap-major first (one copy), so each tap's add runs over contiguous (OW, C) blocks.
    by_tap = np.ascontiguousarray(dcols.transpose(3, 4, 0, 1, 2, 5))
    return scatter_taps([by_tap[i, j] for i in range(kh) for j in range(kw)], kh, kw, geom, s, d)


@functools.lru_cache(maxsize=64)
def pool_counts(h: int, w: int, kh: int, kw: int, s: tuple[int, int], padding: str, dtype: np.dtype) -> np.ndarray:
    """Inputs under each average-pool window (padding excluded): fixed by the geometry, so
    computed once per shape instead of per forward pass. Read-only: it is shared."""
    ones = np.ones((1, h, w, 1), dtype=dtype)
    cols = patches(ones, kh, kw, s, (1, 1), padding)[0]
    cnt = cols.reshape(1, cols.shape[1], cols.shape[2], kh * kw, 1).sum(axis=3)
    cnt.flags.writeable = False
    return cnt
