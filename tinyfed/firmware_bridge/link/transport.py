"""One byte transport per pyserial URL.

* a tty: ``/dev/ttyACM0`` (USB CDC) or ``/dev/ttyUSB0`` (UART bridge);
* ``socket://host:port``: a QEMU or Renode UART on a TCP socket;
* ``sim://BOARD_ID?options``: the in-process simulated board (:mod:`.protocol_sim`).

Importing this module registers the ``sim://`` handler with pyserial's
``protocol_handler_packages``. :func:`open_port` maps every failure to open to
:class:`~tinyfed.firmware_bridge.link.errors.DeviceUnreachable`.
"""

from __future__ import annotations

import logging

import serial
from serial.serialutil import SerialException

from tinyfed.firmware_bridge.link.errors import DeviceUnreachable

log = logging.getLogger(__name__)

#: The package whose ``protocol_sim`` module pyserial's URL search finds for ``sim://``.
HANDLER_PACKAGE = "tinyfed.firmware_bridge.twin"
DEFAULT_BAUD = 115200
SCHEMES = ("sim", "socket", "rfc2217", "loop")


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


def open_port(url: str, *, timeout: float = 0.5, baudrate: int = DEFAULT_BAUD, name: str | None = None):
    """Open ``url`` with ``serial.serial_for_url``; any failure is :class:`DeviceUnreachable`."""
    device = name or url
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
