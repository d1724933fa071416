"""TensorFlow Lite Micro on the host: the int8 golden reference and the arena measurement.

The ``tflite-micro`` wheel runs TFLM's *reference* kernels in-process. Its int8 outputs are
what the firmware's reference-kernel build computes, bit for bit; the full LiteRT
interpreter (``ai_edge_litert``) uses other kernels and differs by +-1 LSB on some outputs,
so it is not the reference here.

Running
    :class:`TflmModel` wraps ``runtime.Interpreter.from_bytes``. :meth:`TflmModel.run` takes an
    int8 batch (batch first; each sample has the model's input shape without its batch dim
    of 1) and runs it sample by sample. :meth:`TflmModel.run_float` first quantizes float
    inputs with TFLite's own rule, the one its QUANTIZE kernel uses:
    ``q = clamp(round_half_away_from_zero(float32(x) / float32(scale)) + zero_point, -128, 127)``
    (``TfLiteRound`` is ``std::round``, which rounds halves away from zero, unlike
    ``np.round``). :func:`chain` runs fragments (from :meth:`TfliteGraph.split`) in
    sequence.

What TFLM's Python interpreter does at a too-small arena (measured with tflite-micro
0.dev2026, x86-64)
    Allocation happens in the constructor. Most too-small sizes make it raise
    ``RuntimeError("TFLM failed to allocate tensors")`` after printing the reason to the
    process's stderr (fd 2, e.g. "Failed to allocate tail memory. Requested: 336,
    available 320"). But some sizes **crash the process with SIGSEGV** instead: every size
    below roughly 460 bytes (the allocator cannot even place its own objects and a null is
    dereferenced), and also a band well above that, just past the persistent tail (for the
    test CNN, whose tail is 2384 B: 2416..2464 bytes crash while 2400 and 2480 raise; every
    size from 0 to 3200 in steps of 16 was tried in its own process). So a size can never be
    probed in-process;
    :func:`measure_arena` probes in a worker subprocess and treats a dead worker as a
    failing size. ``invoke()`` on an allocated interpreter has not been seen to fail for
    lack of arena: everything is planned at allocation.

What the arena holds, and host (64-bit) versus a 32-bit MCU
    ``print_allocations()`` (stderr) reports a *head* and a *tail*. The head is the planned
    non-persistent section: the activation tensors (laid out by the greedy planner, each
    16-byte aligned) plus kernel scratch buffers. Its size does not depend on pointer width,
    so it is what a 32-bit MCU needs too (with the same kernels: CMSIS-NN kernels may
    request extra scratch). The tail is persistent bookkeeping: one ``TfLiteEvalTensor``
    per tensor (24 B on the host, 12 B on a 32-bit MCU: two pointers and a type), a
    ``TfLiteTensor`` for each graph input/output (64 B on the host), quantization structs,
    per-op data (e.g. per-channel multipliers), one node+registration per op (64 B on the
    host, about half on 32-bit), plus the interpreter's own objects. The tail is therefore
    larger on the host than on an MCU, and the measured total is an upper bound for a
    32-bit MCU running the same (reference) kernels. The smallest working arena is also
    larger than head+tail, because allocation needs transient memory (temporary
    ``TfLiteTensor`` structs during ``Prepare``, planner scratch) that is released after.
    :class:`ArenaMeasurement` exposes all three: ``bytes`` (the size to allocate),
    ``tensor_bytes`` (head) and ``persistent_bytes`` (tail).

    For the test CNN (Conv 1x5 -> MaxPool -> Conv -> AvgPool -> Dense -> Softmax on a
    (1, 32, 3) window, 5.4 kB) the host reports head 384 B, tail 2384 B (of which
    TfLiteEvalTensor 360 = 15 x 24 B, node+registration 448 = 7 x 64 B, TfLiteTensor 128,
    quantization 64, op data 684), and the smallest working arena is 3168 B (400 B of
    transient allocation need).

Arena measurement
    :func:`measure_arena` starts ``python -m tinyfed.models.tflm --probe-worker MODEL LOG``;
    the worker reads the model once, then for each size on stdin builds an interpreter with
    that arena, runs one invoke on zero input and answers with one JSON line. A worker that
    dies (segfault/abort) or stops answering makes that size "failing" and a new worker is
    started. The search doubles from 4 KiB until a size works, uses the head+tail that
    size reports as a lower bound (verified by a probe), then bisects on multiples of
    ``resolution``. Deterministic: sizes are multiples of ``resolution`` (16 by default, the
    TFLM alignment) and the arena buffer is 16-byte aligned, so the same model always
    gives the same answer (a size that is not a multiple of 16 loses up to 15 bytes to
    alignment).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinyfed.errors import ModelError
from tinyfed.ops.fixed_point import dequantize, quantize

__all__ = ["TflmModel", "ArenaMeasurement", "chain", "measure_arena", "quantize", "dequantize"]

_CAP = 256 * 1024 * 1024  # give up above this arena size
_START = 4096


def _runtime():
    from tflite_micro.python.tflite_micro import runtime

    return runtime


@contextlib.contextmanager
def _capture_stderr_fd() -> Iterator[list[str]]:
    """Capture what C++ code writes to fd 2 (TFLM's MicroPrintf) into the yielded list."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", errors="replace"))


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith("[RecordingMicroAllocator]")]
    return lines[0] if lines else ""




def _default_arena(g, model_size: int) -> int:
    """A generous arena for running (not measuring), from the graph's activation sizes."""
    acts = sum(-(-t.nbytes // 16) * 16 for t in g.activation_tensors())
    return max(64 * 1024, 2 * acts + 512 * (len(g.tensors) + len(g.ops)) + 16 * 1024, model_size * 2)


class TflmModel:
    """One model loaded in the TFLM host interpreter.

    The bytes are validated with :class:`TfliteGraph` first (a damaged flatbuffer could
    crash TFLM). ``arena_size=None`` picks a generous size from the model's activations;
    a given size that is too small raises :class:`ModelError` (but see the module doc:
    some too-small sizes crash the process; use :func:`measure_arena` to find a safe one).
    """

    def __init__(self, model_bytes: bytes, arena_size: int | None = None, *, source: str = "<bytes>") -> None:
        from tinyfed.models.tflite_graph import TfliteGraph

        self.model_bytes = bytes(model_bytes)
        self.graph = TfliteGraph.from_bytes(self.model_bytes, source=source)
        if arena_size is not None:
            self.arena_size = int(arena_size)
        else:
            self.arena_size = _default_arena(self.graph, len(self.model_bytes))
        runtime = _runtime()
        with _capture_stderr_fd() as log:
            try:
                self._interp = runtime.Interpreter.from_bytes(self.model_bytes, arena_size=self.arena_size)
                err = None
            except (RuntimeError, MemoryError, ValueError) as e:
                err = e
        if err is not None:
            reason = _last_error(log[0]) or str(err)
            raise ModelError(
                f"TFLM cannot load the model in a {self.arena_size}-byte arena: {reason}",
                fix="give a larger arena_size (see measure_arena), or remove ops TFLM does not support",
                source=source,
            )
        self.source = source
        self.input_details = [self._interp.get_input_details(i) for i in range(len(self.graph.inputs))]
        self.output_details = [self._interp.get_output_details(i) for i in range(len(self.graph.outputs))]

    # ---- running ----------------------------------------------------------------

    def _check_input(self, x: np.ndarray, i: int) -> np.ndarray:
        d = self.input_details[i]
        shape = tuple(int(s) for s in d["shape"])
        x = np.asarray(x)
        if x.dtype != d["dtype"]:
            raise ModelError(
                f"input {i} is {x.dtype}, the model wants {np.dtype(d['dtype']).name}",
                fix="quantize the input first (run_float does it with the model's scale/zero point)",
                source=self.source,
            )
        if x.ndim != len(shape) or tuple(x.shape[1:]) != shape[1:]:
            raise ModelError(
                f"input {i} has shape {x.shape}, expected (batch, {', '.join(map(str, shape[1:]))})",
                fix="pass a batch-first array whose samples have the model's input shape",
                source=self.source,
            )
        return x

    def run(self, x: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        """Run a batch sample by sample; returns the stacked (batch-first) outputs.

        For a model with several inputs pass a sequence of arrays; with several outputs a
        list is returned.
        """
        xs = [np.asarray(x)] if len(self.input_details) == 1 else list(x)
        if len(xs) != len(self.input_details):
            raise ModelError(f"model has {len(self.input_details)} inputs, got {len(xs)} arrays", source=self.source)
        xs = [self._check_input(a, i) for i, a in enumerate(xs)]
        batch = {a.shape[0] for a in xs}
        if len(batch) != 1:
            raise ModelError("inputs have different batch sizes", source=self.source)
        n = batch.pop()
        outs: list[list[np.ndarray]] = [[] for _ in self.output_details]
        for b in range(n):
            for i, a in enumerate(xs):
                self._interp.set_input(np.ascontiguousarray(a[b : b + 1]), i)
            try:
                self._interp.invoke()
            except RuntimeError as e:
                raise ModelError(f"TFLM failed to run sample {b}: {e}", source=self.source) from None
            for j in range(len(self.output_details)):
                outs[j].append(np.array(self._interp.get_output(j), copy=True))
        details = self.output_details
        stacked = [
            np.concatenate(o, axis=0) if o else np.zeros((0, *details[j]["shape"][1:]), details[j]["dtype"])
            for j, o in enumerate(outs)
        ]
        return stacked[0] if len(stacked) == 1 else stacked

    def run_float(self, x_float: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """Quantize float inputs with the input's scale/zero point (TFLite rule), then :meth:`run`."""
        d = self.input_details[0]
        q = d["quantization_parameters"]
        if len(q["scales"]) != 1:
            raise ModelError("the model input is not per-tensor quantized", source=self.source)
        return self.run(quantize(x_float, float(q["scales"][0]), int(q["zero_points"][0]), np.dtype(d["dtype"])))


def chain(models: Sequence[bytes], x_int8: np.ndarray) -> np.ndarray:
    """Run single-input/single-output fragments in sequence (output of one feeds the next)."""
    if not models:
        raise ModelError("no models to chain", fix="pass the fragments in execution order")
    y = np.asarray(x_int8)
    prev: TflmModel | None = None
    for k, m in enumerate(models):
        model = TflmModel(m, source=f"fragment {k}")
        if prev is not None:
            out_d, in_d = prev.output_details[0], model.input_details[0]
            oq, iq = out_d["quantization_parameters"], in_d["quantization_parameters"]
            same = (
                tuple(out_d["shape"]) == tuple(in_d["shape"])
                and out_d["dtype"] == in_d["dtype"]
                and np.array_equal(oq["scales"], iq["scales"])
                and np.array_equal(oq["zero_points"], iq["zero_points"])
            )
            if not same:
                raise ModelError(
                    f"fragment {k} input does not match fragment {k - 1} output (shape, type or quantization)",
                    fix="chain the fragments of one split, in order",
                )
        y = model.run(y)  # type: ignore[assignment]
        prev = model
    return y


# --------------------------------------------------------------------------------------
# Arena measurement
# --------------------------------------------------------------------------------------


_ALLOC_TOTAL = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_ALLOC_RECORD = re.compile(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+)")


def parse_allocations(text: str) -> dict[str, int]:
    """Parse ``print_allocations()`` output into ``{"total","head","tail", <record>: bytes}``."""
    out: dict[str, int] = {}
    for m in _ALLOC_TOTAL.finditer(text):
        out[m.group(1)] = int(m.group(2))
    for m in _ALLOC_RECORD.finditer(text):
        out[m.group(1)] = int(m.group(2))
    return out


@dataclass(frozen=True)
class ArenaMeasurement:
    """The smallest TFLM arena (host, 64-bit) in which a model allocates and invokes.

    ``bytes``: smallest multiple of ``resolution`` that works (allocate + one invoke).
    ``tensor_bytes``: the planned head (activations + scratch), pointer-width independent.
    ``persistent_bytes``: the tail (bookkeeping + op data), smaller on a 32-bit MCU.
    ``breakdown``: the tail's records from ``print_allocations()`` (bytes each).
    ``history``: ``(size, "ok" | "fail" | "crash")`` per probe, in order.
    """

    bytes: int
    probes: int
    seconds: float
    resolution: int
    tensor_bytes: int | None = None
    persistent_bytes: int | None = None
    breakdown: dict[str, int] = field(default_factory=dict)
    history: tuple[tuple[int, str], ...] = ()
    worker_starts: int = 0

    @property
    def transient_bytes(self) -> int | None:
        """What allocation needs beyond head + tail (temporary structs during Prepare)."""
        if self.tensor_bytes is None or self.persistent_bytes is None:
            return None
        return self.bytes - self.tensor_bytes - self.persistent_bytes


class _Prober:
    """Talks to probe workers; restarts one when it dies."""

    def __init__(self, model_path: str, log_path: str, timeout: float) -> None:
        self.model_path = model_path
        self.log_path = log_path
        self.err_path = log_path + ".worker-stderr"
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _start(self) -> subprocess.Popen:
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.starts += 1
        with open(self.err_path, "wb") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "tinyfed.models.tflm", "--probe-worker", self.model_path, self.log_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )

    def probe(self, size: int) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(f"{size}\n".encode())
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
            line = proc.stdout.readline() if ready else b""
        except (BrokenPipeError, OSError):
            line = b""
        if line:
            try:
                return json.loads(line)
            except ValueError:
                pass
        # Dead or hung worker: that size fails.
        self.stop(kill=True)
        try:
            worker_err = Path(self.err_path).read_text(errors="replace")
        except OSError:
            worker_err = ""
        if "Traceback (most recent call last)" in worker_err:
            # A Python error in the worker itself (e.g. an import failure) is no arena result.
            last = worker_err.strip().splitlines()[-1]
            raise RuntimeError(f"the arena probe worker failed: {last}")
        try:
            log = Path(self.log_path).read_text(errors="replace")
        except OSError:
            log = ""
        return {"size": size, "ok": False, "crash": True, "error": _last_error(log) or "worker died", "log": log}

    def stop(self, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if not kill and proc.stdin:
                proc.stdin.close()
                proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def measure_arena(
    model_bytes: bytes,
    *,
    resolution: int = 16,
    start: int = _START,
    cap: int = _CAP,
    probe_timeout: float = 300.0,  # a hang bound: a probe past it counts as a crash at that size
    source: str = "<bytes>",
) -> ArenaMeasurement:
    """Smallest arena (multiple of ``resolution``) in which the model allocates and invokes.

    Raises :class:`ModelError` if the model does not load even at ``cap`` bytes (e.g. an op
    TFLM lacks), with TFLM's own message.
    """
    from tinyfed.models.tflite_graph import TfliteGraph

    if resolution < 1:
        raise ValueError("resolution must be >= 1")
    TfliteGraph.from_bytes(model_bytes, source=source)  # a damaged file must not reach TFLM
    t0 = time.monotonic()
    history: list[tuple[int, str]] = []
    answers: dict[int, dict] = {}

    def up(n: int) -> int:
        return -(-n // resolution) * resolution

    with tempfile.TemporaryDirectory(prefix="tinyfed-arena-") as tmp:
        model_path = os.path.join(tmp, "model.tflite")
        log_path = os.path.join(tmp, "probe.log")
        Path(model_path).write_bytes(bytes(model_bytes))
        prober = _Prober(model_path, log_path, probe_timeout)

        def probe(size: int) -> bool:
            ans = prober.probe(size)
            answers[size] = ans
            history.append((size, "ok" if ans.get("ok") else ("crash" if ans.get("crash") else "fail")))
            return bool(ans.get("ok"))

        try:
            lo = 0  # assumed failing: TFLM cannot run in an empty arena
            hi = up(start)
            while not probe(hi):
                lo = hi
                if hi >= cap:
                    err = answers[hi].get("error") or "allocation failed"
                    raise ModelError(
                        f"TFLM cannot run the model even with a {hi}-byte arena: {err}",
                        fix="check that every op is supported by TFLM (unsupported_ops) and that the model is int8",
                        source=source,
                    )
                hi = min(hi * 2, up(cap))
            reported = answers[hi].get("allocations", {})
            total = reported.get("total")
            if total:
                guess = ((total - 1) // resolution) * resolution  # largest multiple below head+tail
                if lo < guess < hi:
                    if probe(guess):
                        hi, lo = guess, 0  # surprising: fall back to the whole range
                    else:
                        lo = guess
            while hi - lo > resolution:
                mid = ((lo + hi) // 2 // resolution) * resolution
                if mid <= lo:
                    mid = lo + resolution
                if probe(mid):
                    hi = mid
                else:
                    lo = mid
        finally:
            prober.stop()
        allocs = answers[hi].get("allocations", {})
    breakdown = {k: v for k, v in allocs.items() if k not in ("total", "head", "tail")}
    return ArenaMeasurement(
        bytes=hi,
        probes=len(history),
        seconds=time.monotonic() - t0,
        resolution=resolution,
        tensor_bytes=allocs.get("head"),
        persistent_bytes=allocs.get("tail"),
        breakdown=breakdown,
        history=tuple(history),
        worker_starts=prober.starts,
    )


# --------------------------------------------------------------------------------------
# The probe worker (python -m tinyfed.models.tflm --probe-worker MODEL LOG)
# --------------------------------------------------------------------------------------


def _probe_once(runtime, model: bytes, n_inputs: int, size: int, log_path: str) -> dict:
    """Allocate + invoke on zeros with ``size`` bytes; TFLM's stderr goes to ``log_path``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    saved = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    ans: dict = {"size": size, "ok": False}
    try:
        try:
            interp = runtime.Interpreter.from_bytes(model, arena_size=size)
        except Exception as e:  # noqa: BLE001
            ans["stage"] = "allocate"
            ans["exception"] = f"{type(e).__name__}: {e}"
        else:
            try:
                for i in range(n_inputs):
                    d = interp.get_input_details(i)
                    interp.set_input(np.zeros(tuple(d["shape"]), dtype=d["dtype"]), i)
                interp.invoke()
                ans["ok"] = True
                os.write(2, b"\n--- allocations ---\n")
                interp.print_allocations()
            except Exception as e:  # noqa: BLE001
                ans["stage"] = "invoke"
                ans["exception"] = f"{type(e).__name__}: {e}"
            del interp
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
    log = Path(log_path).read_text(errors="replace")
    if ans["ok"]:
        ans["allocations"] = parse_allocations(log)
    else:
        ans["error"] = _last_error(log) or ans.get("exception", "")
    return ans


def schema_inputs(model: bytes) -> int:
    """Number of graph inputs, read lazily from the flatbuffer (the parent validated it)."""
    from ai_edge_litert import schema_py_generated as schema_fb

    return schema_fb.Model.GetRootAs(model, 0).Subgraphs(0).InputsLength()


def _probe_worker(model_path: str, log_path: str) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed to stdout must not corrupt the protocol
    runtime = _runtime()
    model = Path(model_path).read_bytes()
    n_inputs = schema_inputs(model)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        ans = _probe_once(runtime, model, n_inputs, int(line), log_path)
        proto.write(json.dumps(ans) + "\n")
        proto.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 3 and args[0] == "--probe-worker":
        return _probe_worker(args[1], args[2])
    print("usage: python -m tinyfed.models.tflm --probe-worker MODEL.tflite LOGFILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
