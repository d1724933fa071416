"""pyserial URL handler for ``sim://BOARD_ID[?option=value&...]``: an in-process simulated board.

Registered by :mod:`tinyfed.firmware_bridge.link.transport` (which adds this package to
``serial.protocol_handler_packages``), so ``serial.serial_for_url("sim://nrf52840")`` works.

Options: ``name`` (boards with the same id and name are the same board, across connections),
``max_payload``, ``slot_bytes``, ``arena_bytes``, ``build``, ``protocol_version``, ``window`` (the
request frames HELLO lets the host keep in flight; 0 = an older board, stop-and-wait), and ``key=none``
for a board nobody provisioned (by default a new board gets a fresh key, recorded in the key store).

The board answers synchronously inside :meth:`Serial.write`, so when nothing is buffered nothing
will ever arrive: :meth:`Serial.read` then returns at once and advances the port's
:class:`VirtualClock` by the read timeout instead of sleeping. A client that times out with
``port.tinyfed_clock`` (as :class:`~tinyfed.firmware_bridge.link.client.BoardClient` does) sees the
exact timeout behaviour of a real link, without waiting.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from tinyfed.firmware_bridge.twin.sim import SimBoard, get_sim_board

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12 on

_MIB64 = 64 * 1024 * 1024
#: Integer options and the values a board could have: HELLO carries the version in a byte, the
#: payload limit in 16 bits, and the sizes in 32 bits; a simulated board holds its slot in host
#: memory, so sizes stop at 64 MiB, past any microcontroller's flash.
_INT_OPTIONS: dict[str, tuple[int, int]] = {
    "max_payload": (16, 0xFFFF), "slot_bytes": (1, _MIB64), "arena_bytes": (1, _MIB64),
    "protocol_version": (1, 0xFF), "window": (0, 0xFF),
    "firmware_ram_bytes": (0, _MIB64), "firmware_flash_bytes": (0, _MIB64),
}


class VirtualClock:
    """Monotonic seconds that advance only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def parse_sim_url(url: str) -> tuple[str, str, dict[str, object]]:
    """``sim://nrf52840?max_payload=128&name=a`` -> ``("nrf52840", "a", {"max_payload": 128})``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sim":
        raise SerialException(f"expected sim://BOARD_ID[?options], got {url!r}")
    board_id = parts.netloc or parts.path.lstrip("/")
    if not board_id:
        raise SerialException(f"{url}: sim:// needs a board id, e.g. sim://nrf52840")
    name = ""
    overrides: dict[str, object] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        value = values[-1]
        if key == "name":
            name = value
        elif key == "build":
            overrides["build"] = value
        elif key == "key":
            if value not in ("none", "auto"):
                raise SerialException(f"{url}: option key must be none (a keyless board) or auto, got {value!r}")
            overrides["keyed"] = value == "auto"
        elif key in _INT_OPTIONS:
            low, high = _INT_OPTIONS[key]
            try:
                number = int(value)
            except ValueError:
                raise SerialException(f"{url}: option {key} must be an integer, got {value!r}") from None
            if not low <= number <= high:
                raise SerialException(f"{url}: option {key} must be {low:,}..{high:,}, got {number:,}")
            overrides[key] = number
        else:
            known = ", ".join(("name", "build", "key", *_INT_OPTIONS))
            raise SerialException(f"{url}: unknown sim option {key!r} (known: {known})")
    return board_id, name, overrides


class Serial(SerialBase):
    """A serial port whose other end is a :class:`~tinyfed.firmware_bridge.twin.sim.SimBoard`."""

    def __init__(self, *args, **kwargs) -> None:
        self.board: SimBoard | None = None
        self._rx = bytearray()
        self.tinyfed_clock = VirtualClock()
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        port = self.port
        if port is None:
            raise SerialException("Port must be configured before it can be used.")
        board_id, name, overrides = parse_sim_url(port)
        keyed = bool(overrides.pop("keyed", True))
        self.board = get_sim_board(board_id, name, keyed=keyed, **overrides)
        if getattr(self.board, "unplugged", False):
            raise SerialException(f"could not open port {self.portstr}: the simulated board is unplugged")
        self._rx.clear()
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self.board = None

    def _reconfigure_port(self, *args, **kwargs) -> None:
        pass

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        return len(self._rx)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        if not self._rx:
            timeout = self.timeout
            if timeout is None:
                raise SerialException("sim://: a read without timeout would block forever")
            self.tinyfed_clock.advance(timeout)
            return b""
        data = bytes(self._rx[:size])
        del self._rx[:size]
        return data

    def write(self, data: Buffer) -> int:
        if not self.is_open or self.board is None:
            raise PortNotOpenError()
        if getattr(self.board, "unplugged", False):
            raise SerialException(f"{self.portstr}: the simulated board was unplugged")
        data = bytes(data)
        self._rx += self.board.receive(data)
        return len(data)

    def reset_input_buffer(self) -> None:
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        pass

    def flush(self) -> None:
        pass
