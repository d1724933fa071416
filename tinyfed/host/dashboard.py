"""The live view of a run on a terminal (``tinyfed run`` on a TTY; plain lines otherwise).

It shows where the run stands: model version, the task's test metric (accuracy for a classifier;
float master and the deployable int8 model), the devices busy / idle / late / dropped, bytes moved
each way, elapsed time and an estimate of the time to the target (from the metric gained per
second over the last evaluations; none while it is not rising).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _kb(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:,.2f} MiB"


@dataclass
class Dashboard:
    """Renderable state of one run; feed it the engine's progress rows."""

    strategy: str
    target: float | None
    devices: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)
    metric: str = "accuracy"  # the key of the task's metric in the engine's rows (training.metrics)
    #: how the run ended (None while it runs): the last frame says so instead of an estimate
    outcome: str | None = None

    def update(self, row: dict[str, Any]) -> None:
        self.last = row
        if row.get("kind", "evaluation") == "evaluation":
            self.rows.append(row)

    def finish(self, reached_target: bool) -> None:
        """The run has stopped: the final frame shows the outcome, not a time to the target."""
        if self.target is None:
            self.outcome = "stopped (no target)"
        else:
            self.outcome = "target reached" if reached_target else "stopped before the target"

    def eta_seconds(self) -> float | None:
        """Seconds to the target at the recent rate of the metric's gain (None when not rising)."""
        if self.target is None or len(self.rows) < 2:
            return None
        recent, m = self.rows[-5:], self.metric
        first, last = recent[0], recent[-1]
        gained, took = last[m] - first[m], last["t"] - first["t"]
        if last[m] >= self.target:
            return 0.0
        if gained <= 0 or took <= 0:
            return None
        return (self.target - last[m]) / (gained / took)

    def render(self) -> Group:
        last, m = self.last, self.metric
        head = Table.grid(padding=(0, 2))
        for _ in range(4):
            head.add_column()
        states = last.get("devices", {})
        eta = self.eta_seconds()
        best = max((r[m] for r in self.rows), default=float("nan"))
        head.add_row(Text(f"{self.strategy}", style="bold"), f"version {last.get('version', 0)}",
                     f"{m} {self.rows[-1][m]:.4f}" if self.rows else f"{m} -",
                     f"target {self.target:.4f}" if self.target is not None else "no target")
        head.add_row(f"{self.devices} devices", f"busy {states.get('busy', 0)}  idle {states.get('idle', 0)}",
                     f"late {states.get('backoff', 0)}  dropped {states.get('dropped', 0)}",
                     f"best {best:.4f}" if self.rows else "best -")
        head.add_row(f"up {_kb(int(last.get('bytes_up', 0)))}", f"down {_kb(int(last.get('bytes_down', 0)))}",
                     f"elapsed {last.get('t', 0.0):.0f} s",
                     self.outcome if self.outcome is not None else
                     "ETA -" if eta is None else ("target reached" if eta == 0 else f"ETA {eta:.0f} s"))
        if self.rows and "epsilon" in self.rows[-1]:  # differential privacy: what the boards' data have spent
            head.add_row(Text(f"epsilon {self.rows[-1]['epsilon']:.3g}", style="bold"), "per board, docs/privacy.md",
                         "", "")
        rejections = last.get("rejections") or {}
        if rejections:  # refused updates and boards, by reason (authentication's bad_mac, unknown_device ...)
            why = ", ".join(f"{k} {n}" for k, n in sorted(rejections.items()))
            head.add_row(Text(f"rejected {last.get('rejected', sum(rejections.values()))}", style="yellow"), why,
                         "", "")
        table = Table(show_edge=False, box=None, header_style="bold")
        for col in ("version", m, "int8", "loss", "t (s)"):
            table.add_column(col, justify="right")
        for r in self.rows[-8:]:
            int8 = f"{r[f'int8_{m}']:.4f}" if f"int8_{m}" in r else "-"
            table.add_row(str(r["version"]), f"{r[m]:.4f}", int8, f"{r['loss']:.4f}", f"{r['t']:.1f}")
        return Group(head, table)
