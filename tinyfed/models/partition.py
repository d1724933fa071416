"""Federated partitions: which samples each simulated device holds (numpy only).

Every function is deterministic for its ``seed`` and returns ``list[np.ndarray]`` of sorted
int64 sample indices in which every sample appears exactly once.
"""

from __future__ import annotations

import numpy as np

from tinyfed.errors import DatasetError

__all__ = ["dirichlet", "iid", "label_skew", "natural", "split_clients", "spread_clients"]


def _check_clients(n_clients: int, n_samples: int, what: str) -> None:
    if int(n_clients) != n_clients or n_clients < 1:
        raise DatasetError(f"{what}: number of clients must be a positive integer, got {n_clients!r}")
    if n_clients > n_samples:
        raise DatasetError(
            f"{what}: {n_clients} clients but only {n_samples} samples",
            fix=f"use at most {n_samples} clients",
        )


def natural(groups: np.ndarray) -> list[np.ndarray]:
    """One client per distinct group (user), in increasing group order."""
    if groups is None:
        raise DatasetError(
            "this dataset has no natural users to partition by",
            fix="use an 'iid' or 'dirichlet' partition instead",
        )
    g = np.asarray(groups)
    if g.ndim != 1:
        raise DatasetError(f"natural partition: groups must be 1-D, got shape {g.shape}")
    order = np.argsort(g, kind="stable")
    _, starts = np.unique(g[order], return_index=True)
    bounds = list(starts[1:]) + [len(g)]
    return [np.sort(order[a:b]).astype(np.int64) for a, b in zip(starts, bounds, strict=True)]


def iid(n_samples: int, n_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle the samples and deal them into ``n_clients`` near-equal parts."""
    n_samples = int(n_samples)
    _check_clients(n_clients, n_samples, "iid partition")
    perm = np.random.default_rng(seed).permutation(n_samples)
    return [np.sort(p).astype(np.int64) for p in np.array_split(perm, int(n_clients))]


def dirichlet(
    labels: np.ndarray,
    n_clients: int,
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 2,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed partition: for each class, client shares are drawn from Dir(``alpha``).

    Small ``alpha`` (e.g. 0.1) gives each client few classes; large ``alpha`` (e.g. 100)
    approaches IID.  Draws are repeated (up to ``max_tries``) until every client holds at
    least ``min_size`` samples; if that never happens, the smallest clients are topped up
    with random samples taken from the largest ones (still deterministic for ``seed``).
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DatasetError(f"dirichlet partition: labels must be 1-D, got shape {y.shape}")
    n = len(y)
    _check_clients(n_clients, n, "dirichlet partition")
    n_clients = int(n_clients)
    if not alpha > 0:
        raise DatasetError(f"dirichlet partition: alpha must be > 0, got {alpha!r}", fix="use e.g. --alpha 0.5")
    if min_size < 0 or min_size * n_clients > n:
        raise DatasetError(
            f"dirichlet partition: cannot give {n_clients} clients {min_size} samples each out of {n}",
            fix="use fewer clients or a smaller min_size",
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in classes]
    parts: list[list[np.ndarray]] = []
    for _ in range(max(1, int(max_tries))):
        parts = [[] for _ in range(n_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        sizes = [sum(len(c) for c in p) for p in parts]
        if min(sizes) >= min_size:
            break
    out = [np.concatenate(p).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]
    _top_up(out, min_size, rng)
    return [np.sort(p) for p in out]


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> None:
    """Move random samples from the largest clients to those below ``min_size`` (in place)."""
    while True:
        sizes = np.array([len(p) for p in parts])
        small = int(np.argmin(sizes))
        if sizes[small] >= min_size:
            return
        big = int(np.argmax(sizes))
        donor = parts[big]
        take = int(rng.integers(len(donor)))
        parts[small] = np.append(parts[small], donor[take])
        parts[big] = np.delete(donor, take)


# A descriptive alias: "label skew" is what the Dirichlet partition produces.
label_skew = dirichlet


def split_clients(parts: list[np.ndarray], factor: int, seed: int = 0, contiguous: bool = False) -> list[np.ndarray]:
    """Split every client into ``factor`` sub-clients (e.g. 27 users -> 27*factor devices).

    By default each client's samples are shuffled (seeded) before being dealt into
    ``factor`` near-equal parts; with ``contiguous=True`` they are cut in index order
    instead (for time-ordered data this gives each sub-client one stretch of time).
    """
    if int(factor) != factor or factor < 1:
        raise DatasetError(f"split_clients: factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for i, part in enumerate(parts):
        p = np.sort(np.asarray(part, dtype=np.int64))
        if len(p) < factor:
            raise DatasetError(
                f"split_clients: client {i} has {len(p)} samples, fewer than factor {factor}",
                fix=f"use a factor of at most {min(len(q) for q in parts)}",
            )
        if not contiguous:
            p = rng.permutation(p)
        out.extend(np.sort(s) for s in np.array_split(p, factor))
    return out


def spread_clients(parts: list[np.ndarray], n_clients: int, seed: int = 0) -> list[np.ndarray]:
    """``parts`` (e.g. the natural partition's users) divided among ``n_clients`` devices.

    With more devices than parts, each part is split (shuffled with ``seed`` plus its place)
    into near-equal sub-clients, the first ``n_clients % len(parts)`` parts into one more, so
    every device holds samples of one user only; the zoo and a user's own data share this so
    the same users on the same fleet give the same shards.
    """
    if int(n_clients) != n_clients or n_clients < len(parts):
        raise DatasetError(f"spread_clients: {n_clients!r} clients for {len(parts)} parts; need at least one per part",
                           fix=f"use at least {len(parts)} clients")
    base, extra = divmod(int(n_clients), len(parts))
    out: list[np.ndarray] = []
    for i, p in enumerate(parts):
        out.extend(split_clients([p], base + (1 if i < extra else 0), seed=seed + i))
    return out
