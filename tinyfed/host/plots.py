"""Charts of runs and studies: a metric (or bytes) curve per run or strategy, drawn with matplotlib's Agg backend.

``tinyfed run`` draws its own at its end and ``tinyfed runs compare`` several runs' side by side; both
hand :func:`metric_chart` and :func:`bytes_chart` the same :class:`Curve`, so the two never drift apart.
matplotlib is imported only when a chart is drawn (it costs a second of start-up).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfed.errors import TinyfedError

log = logging.getLogger(__name__)

#: What ``--x`` may put on the horizontal axis.
X_AXES = ("time", "version", "bytes")


class PlotError(TinyfedError):
    """A chart cannot be drawn (matplotlib missing, nothing to draw)."""


@dataclass
class Curve:
    """One line of a chart: a run's (or one strategy of a study's) metric per evaluated version.

    ``time_s`` is the run's seconds (a study's simulated seconds when ``simulated``); ``bytes`` the
    tasks' bytes so far, both ways; ``end_s`` the time the run stopped, to which the last value holds.
    """

    label: str
    metric: str = "accuracy"
    time_s: list[float] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    value: list[float | None] = field(default_factory=list)
    bytes: list[int] = field(default_factory=list)
    end_s: float | None = None
    simulated: bool = False

    def xs(self, x: str) -> list[float]:
        """The curve's points along ``x`` (one of :data:`X_AXES`)."""
        if x == "time":
            return list(self.time_s)
        if x == "version":
            return [float(v) for v in self.version]
        return [float(b) for b in self.bytes]

    def first_reaching(self, target: float | None) -> int | None:
        """Index of the first point at or above ``target`` (None when never, or no target)."""
        if target is None:
            return None
        return next((i for i, v in enumerate(self.value) if v is not None and v >= target), None)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed); a clear error without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("matplotlib is not installed, so no chart can be drawn",
                        fix="pip install matplotlib") from None
    return plt


def _time_label(curves: Sequence[Curve]) -> str:
    kinds = {c.simulated for c in curves}
    if kinds == {True}:
        return "simulated time (s)"
    if kinds == {False}:
        return "run time (s)"
    return "time (s): simulated for studies, run time for runs"


def _x_label(x: str, curves: Sequence[Curve]) -> str:
    return {"time": _time_label(curves), "version": "global version",
            "bytes": "tasks' bytes on the links so far, both ways"}[x]


def metric_chart(path: Path, curves: Sequence[Curve], *, x: str = "time", targets: Sequence[float] = (),
                 title: str | None = None, log_panel: bool = False) -> Path:
    """The curves' metric against ``x`` as steps (a version's value holds until the next), with a
    dashed line at each target; with ``log_panel``, a second panel on a log time axis (a study's
    early versions are seconds apart, its last ones hours). Written to ``path`` (PNG)."""
    if x not in X_AXES:
        raise PlotError(f"cannot put {x!r} on the x axis", fix=f"use one of {', '.join(X_AXES)}")
    drawn = [c for c in curves if any(v is not None for v in c.value)]
    if not drawn:
        raise PlotError("no evaluated version to plot", fix="give runs that evaluated at least one version")
    plt = pyplot()
    scales = ("linear", "log") if log_panel and x == "time" else ("linear",)
    fig, axes = plt.subplots(1, len(scales), figsize=(11, 4.4) if len(scales) == 2 else (7.5, 4.6), squeeze=False)
    for ax, scale in zip(axes[0], scales, strict=True):
        for c in drawn:
            xs, ys = _steps(c, x, positive=scale == "log")
            ax.step(xs, ys, where="post", label=c.label, marker="o" if len(xs) < 30 else None, markersize=3)
        for target in sorted(set(targets)):
            ax.axhline(target, color="grey", linestyle="--", linewidth=0.8, label=f"target {target:g}")
        ax.set_xscale(scale)
        ax.set_xlabel(_x_label(x, drawn) + (", log scale" if scale == "log" else ""))
        ax.set_ylabel("test " + " / ".join(sorted({c.metric for c in drawn})))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return _save(plt, fig, path)


def _steps(c: Curve, x: str, *, positive: bool = False) -> tuple[list[float], list[float]]:
    """A curve's evaluated points along ``x``, held on to the run's end on a time axis; only x > 0
    when ``positive`` (a log axis)."""
    pts = [(px, v) for px, v in zip(c.xs(x), c.value, strict=True) if v is not None and (px > 0 or not positive)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if x == "time" and c.end_s is not None and xs and c.end_s > xs[-1]:
        xs, ys = xs + [c.end_s], ys + [ys[-1]]  # the last version holds to the run's end
    return xs, ys


def bytes_chart(path: Path, curves: Sequence[Curve], *, title: str | None = None, log: bool = False) -> Path:
    """The tasks' bytes on the links (both ways) against time, one step line per curve (log-log with
    ``log``, points at zero left out); ``path`` (PNG)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for c in curves:
        pts = [(t, b) for t, b in zip(c.time_s, c.bytes, strict=True) if not log or (t > 0 and b > 0)]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if not log and c.end_s is not None and xs and c.end_s > xs[-1]:
            xs, ys = xs + [c.end_s], ys + [ys[-1]]
        ax.step(xs, ys, where="post", label=c.label)
    ax.set_xlabel(_time_label(curves) + (", log scale" if log else ""))
    ax.set_ylabel("tasks' bytes on the links, both ways" + (" (log scale)" if log else ""))
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
