"""Ray backend of the fleet simulator: the boards' training steps as Ray tasks.

The simulator owns virtual time and every decision; a backend only trains. A task's training is
a pure function of (model, vector, device samples, seed, version, training parameters)
(:func:`tinyfed.host.simulator.train_step`), so this backend may train it whenever it likes and
collects the result when its virtual arrival is handled: the event order, the steps and the
final model are those of the local backend, only wall time changes.

What it trains ahead is a window: the simulator hands it the tasks whose arrivals are next in
virtual time (:meth:`prefetch`), ``lookahead`` of them (twice the cluster's CPUs by default), so
the workers stay busy on results that will be asked for soon. Submitting every task at dispatch
instead would train, on a 10,000-board fleet, 10,000 tasks at t = 0 of which a few hundred are
ever collected (measured: FedBuff, 10 versions, 146 s against 1.9 s locally). BLAS runs one
thread per worker, as in the local backend, so the arithmetic is the same too.

Local Ray by default (``ray.init`` with this machine's cores); ``address`` joins a running
cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others,
then ``tinyfed simulate --backend ray --address HEAD:6379``). Ray is optional: ``pip install
'tinyfed[ray]'`` (``make`` installs it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Any, Self

from tinyfed.errors import TinyfedError

log = logging.getLogger(__name__)

#: Versions whose vector stays in the object store for tasks still to be dispatched at them.
_VECTORS_KEPT = 4
#: Thread limits every Ray worker starts with (the local backend holds BLAS to one thread too).
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "TF_CPP_MIN_LOG_LEVEL": "3"}


def _train_remote(model: Any, *args: Any) -> Any:
    from tinyfed.host.simulator import train_step

    return train_step(model, *args)


class RayBackend:
    """Trains each simulated task as a Ray task, submitted at dispatch (see the module docstring)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 lookahead: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise TinyfedError("the Ray backend needs the ray package, which is not installed",
                               fix="pip install 'tinyfed[ray]' (or `make setup`), or use --backend local") from None
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "runtime_env": {"env_vars": dict(_ONE_THREAD)}}
            if address is not None:
                kwargs["address"] = address
            elif num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise TinyfedError(f"cannot start or join {where}: {exc}",
                                   fix="check `ray status` on the head node, or drop --address for local Ray")\
                    from None
            self._owns_ray = True
        self._remote = ray.remote(num_cpus=1)(_train_remote)
        self._models: dict[int, tuple[Any, Any]] = {}  # id(model) -> (model, its object ref)
        self._vectors: OrderedDict[int, tuple[Any, Any]] = OrderedDict()  # id(vector) -> (vector, its ref)
        self._args: dict[int, tuple] = {}  # dispatched, not yet submitted
        self._pending: dict[int, Any] = {}  # submitted: task id -> object ref
        self.steps = 0  # results collected (as LocalBackend counts its trainings)
        self.submitted = 0  # tasks handed to Ray (each trains unless cancelled before it starts)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.lookahead = int(lookahead) if lookahead is not None else max(4, 2 * cpus)
        log.info("Ray backend: %d CPUs in the cluster, training up to %d arrivals ahead", cpus, self.lookahead)

    def _model_ref(self, model: Any) -> Any:
        """The model once in Ray's object store (features and tail, without the evaluators)."""
        key = id(model)
        if key not in self._models:
            slim = dataclasses.replace(model, evaluate=None, evaluate_full=None)
            self._models[key] = (model, self._ray.put(slim))
        return self._models[key][1]

    def _vector_ref(self, vector: Any) -> Any:
        """One object-store copy per model version: the tasks dispatched at a version share its
        vector (a whole har_cnn is 195 KB; 10,000 tasks at t = 0 would otherwise copy it 10,000 times).
        Evicting an entry is safe: a pending task keeps the object it was given alive."""
        key = id(vector)
        if key in self._vectors:
            self._vectors.move_to_end(key)
        else:
            self._vectors[key] = (vector, self._ray.put(vector))
            while len(self._vectors) > _VECTORS_KEPT:
                self._vectors.popitem(last=False)
        return self._vectors[key][1]

    def start(self, task_id: int, args: tuple) -> None:
        self._args[task_id] = args

    @property
    def outstanding(self) -> int:
        """Tasks submitted whose results are not collected yet."""
        return len(self._pending)

    def prefetch(self, task_ids: list[int]) -> None:
        """Submit these dispatched tasks (the next arrivals), those not submitted yet."""
        for task_id in task_ids:
            if task_id in self._args:
                self._submit(task_id)

    def _submit(self, task_id: int) -> None:
        model, vector, *rest = self._args.pop(task_id)
        self._pending[task_id] = self._remote.remote(self._model_ref(model), self._vector_ref(vector), *rest)
        self.submitted += 1

    def cancel(self, task_id: int) -> None:
        self._args.pop(task_id, None)
        ref = self._pending.pop(task_id, None)
        if ref is not None:
            try:
                self._ray.cancel(ref)
            except Exception:  # noqa: BLE001 - a task that already ran cannot be cancelled; its result is dropped
                log.debug("task %d: already finished, result dropped", task_id)

    def finish(self, task_id: int) -> Any:
        if task_id in self._args:  # not trained ahead: train it now
            self._submit(task_id)
        self.steps += 1
        return self._ray.get(self._pending.pop(task_id))

    def close(self) -> None:
        """Drop pending work and, if this backend started Ray, stop it."""
        for task_id in [*self._args, *self._pending]:
            self.cancel(task_id)
        self._models.clear()
        self._vectors.clear()
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
