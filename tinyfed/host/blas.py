"""BLAS held to one thread while the host trains or simulates.

The host's vectors and matrices are small: several BLAS threads per call only burn CPU (measured
7x on 2 cores in the simulator). And OpenBLAS's fork handler shuts its thread pool down, so a fork
while another thread is inside a multi-threaded BLAS call (an emulator started beside a run)
leaves that call spinning for ever (seen in the suite: the engine stuck in ``exec_blas``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Limit BLAS to one thread inside the block (numpy's default threads without threadpoolctl,
    which scikit-learn brings)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
