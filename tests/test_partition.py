"""partition.spread_clients: the natural partition's users divided among more devices (what the
zoo models and a user's own data with a ``user`` array both shard by)."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfed.errors import DatasetError
from tinyfed.models import partition


def test_every_device_holds_one_users_samples_and_every_sample_is_dealt_once() -> None:
    groups = np.repeat([4, 1, 7], [9, 4, 6])
    parts = partition.natural(groups)
    for n in (3, 4, 8, 11):
        out = partition.spread_clients(parts, n, seed=2)
        assert len(out) == n
        assert sorted(np.concatenate(out).tolist()) == list(range(len(groups)))
        assert all(len(np.unique(groups[p])) == 1 for p in out)
        # the first n % 3 users get one more device than the others
        per_user = [sum(1 for p in out if groups[p[0]] == g) for g in (1, 4, 7)]
        base, extra = divmod(n, 3)
        assert per_user == [base + (i < extra) for i in range(3)]
    assert [p.tolist() for p in partition.spread_clients(parts, 3)] == [p.tolist() for p in parts]
    assert [p.tolist() for p in partition.spread_clients(parts, 8, seed=5)] == \
        [p.tolist() for p in partition.spread_clients(parts, 8, seed=5)]


def test_fewer_devices_than_users_or_too_small_a_user_is_refused() -> None:
    parts = partition.natural(np.repeat([0, 1, 2], [5, 2, 5]))
    with pytest.raises(DatasetError, match="2 clients for 3 parts"):
        partition.spread_clients(parts, 2)
    with pytest.raises(DatasetError, match="client 0 has 2 samples, fewer than factor 3"):
        partition.spread_clients(parts, 9)
