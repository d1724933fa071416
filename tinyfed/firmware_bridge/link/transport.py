"""One byte transport per pyserial URL.

* a tty: ``/dev/ttyACM0`` (USB CDC) or ``/dev/ttyUSB0`` (UART bridge);
* ``socket://host:port``: a QEMU or Renode UART on a TCP socket;
* ``sim://BOARD_ID?options``: the in-process simulated board (:mod:`.protocol_sim`).

Importing this module registers the ``sim://`` handler with pyserial's
``protocol_handler_packages``. :func:`open_port` maps every failure to open to
:class:`~tinyfed.firmware_bridge.link.errors.DeviceUnreachable`.

A tty is opened by pyserial's POSIX ``serial.Serial`` with the termios settings of
:class:`SerialSettings` (from the board profile's ``[link]``: baud, framing, flow control) and
``exclusive=True``: tinyfed takes an ``flock`` on the tty, so a second process opening a board
another holds is refused with :class:`~tinyfed.firmware_bridge.link.errors.PortInUse` instead of
both reading half of each other's frames (a tty another program holds with ``TIOCEXCL`` is
refused the same way).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import serial
from serial.serialutil import SerialException

from tinyfed.firmware_bridge.link.errors import DeviceUnreachable, PortInUse

if TYPE_CHECKING:
    from tinyfed.boards.schema import Link

log = logging.getLogger(__name__)

#: The package whose ``protocol_sim`` module pyserial's URL search finds for ``sim://``.
HANDLER_PACKAGE = "tinyfed.firmware_bridge.twin"
DEFAULT_BAUD = 115200
SCHEMES = ("sim", "socket", "rfc2217", "loop")


@dataclass(frozen=True)
class SerialSettings:
    """How the host's tty is set up for one board (termios via pyserial): 8 data bits always."""

    baudrate: int = DEFAULT_BAUD
    parity: str = serial.PARITY_NONE
    stopbits: int = serial.STOPBITS_ONE
    rtscts: bool = False

    @classmethod
    def for_link(cls, link: Link) -> SerialSettings:
        """The settings a board profile's ``[link]`` gives (a USB CDC link: its baud is nominal)."""
        framing = link.framing
        return cls(baudrate=link.baud or DEFAULT_BAUD, parity=framing[1], stopbits=int(framing[2]),
                   rtscts=link.flow_control == "rtscts")

    @property
    def framing(self) -> str:
        return f"8{self.parity}{self.stopbits}"

    def pyserial_kwargs(self) -> dict[str, Any]:
        return {"baudrate": self.baudrate, "bytesize": serial.EIGHTBITS, "parity": self.parity,
                "stopbits": self.stopbits, "rtscts": self.rtscts, "xonxoff": False, "dsrdtr": False}


def serial_settings(board: str | None) -> SerialSettings:
    """The tty settings of the board profile named ``board``; 115200 8N1 without flow control for a
    board not known here (``?``, or a profile only another boards directory has)."""
    if not board or board == "?":
        return SerialSettings()
    from tinyfed.boards import get_board
    from tinyfed.errors import TinyfedError

    try:
        return SerialSettings.for_link(get_board(board).link)
    except TinyfedError:
        log.debug("no profile for board %r: the tty gets 115200 8N1", board)
        return SerialSettings()


def register_url_handlers() -> None:
    """Let ``serial.serial_for_url`` open ``sim://`` URLs (idempotent)."""
    if HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(HANDLER_PACKAGE)


register_url_handlers()


def describe(url: str) -> str:
    """The kind of transport a URL names: ``sim``, ``socket``, ``tty`` ..."""
    if "://" in url:
        return url.split("://", 1)[0].lower()
    return "tty"


def socket_address_problem(url: str) -> str | None:
    """What is wrong with a ``socket://HOST:PORT`` URL (None when nothing): pyserial's own message for
    a bad port is a list of its logging options, which tells a user nothing."""
    rest = url.split("://", 1)[1].split("?", 1)[0].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        return f"{url} has no HOST:PORT"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{url}: the port {port!r} is not a number from 1 to 65535"
    return None


def open_port(url: str, *, timeout: float = 0.5, baudrate: int = DEFAULT_BAUD, name: str | None = None,
              settings: SerialSettings | None = None):
    """Open ``url`` with ``serial.serial_for_url``; any failure is :class:`DeviceUnreachable`.

    A tty is set up with ``settings`` (default: ``baudrate`` 8N1, no flow control) and locked for this
    process; one another process holds is :class:`PortInUse`."""
    device = name or url
    kind = describe(url)
    if kind == "tty":
        return _open_tty(url, timeout, settings or SerialSettings(baudrate=baudrate), device)
    if describe(url) == "socket":
        problem = socket_address_problem(url)
        if problem is not None:
            raise DeviceUnreachable(problem, device=device,
                                    fix="give socket://HOST:PORT, e.g. socket://127.0.0.1:4000 (`tinyfed emulate` "
                                        "prints its boards' URLs)")
    try:
        port = serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=max(timeout, 1.0))
    except ValueError as exc:  # pyserial: unknown URL scheme or bad parameter
        raise DeviceUnreachable(f"cannot open {url}: {exc}", device=device,
                                fix="use a tty path, socket://HOST:PORT or sim://BOARD_ID") from None
    except (SerialException, OSError) as exc:
        kind = describe(url)
        fix = {
            "socket": "is the emulator running? (`tinyfed emulate` prints the URLs it serves)",
            "sim": "check the sim:// options (see docs/host-link.md)",
            "tty": "check the cable and the port name (ls /dev/ttyACM* /dev/ttyUSB*) and that you may open it "
                   "(the dialout group)",
        }.get(kind, "check the URL")
        raise DeviceUnreachable(f"cannot open the port: {_short(exc)}", device=device, fix=fix) from None
    log.debug("opened %s", url)
    return port


def _open_tty(path: str, timeout: float, settings: SerialSettings, device: str) -> serial.Serial:
    try:
        port = serial.Serial(path, timeout=timeout, write_timeout=max(timeout, 1.0), exclusive=True,
                             **settings.pyserial_kwargs())
    except ValueError as exc:  # pyserial: a setting the port cannot take
        raise DeviceUnreachable(f"cannot set up {path}: {exc}", device=device,
                                fix="check the board profile's [link] baud, framing and flow_control") from None
    except (SerialException, OSError) as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EBUSY):  # flock held, or TIOCEXCL set
            raise PortInUse(path, device=device) from None
        raise DeviceUnreachable(f"cannot open the port: {_short(exc)}", device=device,
                                fix="check the cable and the port name (ls /dev/ttyACM* /dev/ttyUSB*) and that you "
                                    "may open it (the dialout group)") from None
    log.debug("opened %s at %d %s%s", path, settings.baudrate, settings.framing,
              " with RTS/CTS" if settings.rtscts else "")
    return port


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
