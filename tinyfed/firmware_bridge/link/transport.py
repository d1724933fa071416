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


def open_port(url: str, *, timeout: float = 0.5, baudrate: int = DEFAULT_BAUD, name: str | None = None):
    """Open ``url`` with ``serial.serial_for_url``; any failure is :class:`DeviceUnreachable`."""
    device = name or url
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
