"""What is attached to this machine: serial ports (pyserial) and debug probes (pyOCD, if installed).

``tinyfed devices --scan`` prints it, so a user can find the tty of a board before writing a fleet
file, and the probe that ``tinyfed flash`` would use.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SerialPort:
    device: str  # what a fleet file's url takes: /dev/ttyACM0, COM3
    description: str
    hwid: str
    vid_pid: str | None  # "1366:1015" for a USB port, None otherwise


@dataclass(frozen=True)
class Probe:
    unique_id: str
    vendor: str
    product: str


@dataclass
class Scan:
    ports: list[SerialPort] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    #: why probes could not be listed (pyOCD missing, no USB access), or None
    probe_problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"serial_ports": [asdict(p) for p in self.ports], "probes": [asdict(p) for p in self.probes],
                "probe_problem": self.probe_problem}


def scan() -> Scan:
    """Every serial port pyserial sees, and every debug probe pyOCD sees."""
    probes, problem = debug_probes()
    return Scan(ports=serial_ports(), probes=probes, probe_problem=problem)


def serial_ports() -> list[SerialPort]:
    """Every serial port pyserial sees, by device name."""
    from serial.tools import list_ports

    found = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        vid_pid = f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else None
        found.append(SerialPort(p.device, p.description or "", p.hwid or "", vid_pid))
    return found


def debug_probes() -> tuple[list[Probe], str | None]:
    """Every debug probe pyOCD sees, and why none could be listed (pyOCD missing, no USB access) or None."""
    try:
        from pyocd.probe.aggregator import DebugProbeAggregator
    except ImportError:
        return [], "pyOCD is not installed (pip install pyocd) to list debug probes"
    try:
        probes = DebugProbeAggregator.get_all_connected_probes()
    except Exception as exc:  # noqa: BLE001 - a USB back end that cannot start: say why, list the ports anyway
        log.debug("probe scan failed", exc_info=True)
        return [], f"pyOCD could not list probes: {exc}"
    return [Probe(str(p.unique_id), str(p.vendor_name), str(p.product_name)) for p in probes], None
