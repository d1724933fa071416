"""Host side of the serial link to boards (see ``docs/host-link.md`` and ``docs/protocol.md``).

``framing`` (packets and frames), ``transport`` (pyserial URLs, incl. ``sim://``), ``client``
(:class:`~tinyfed.firmware_bridge.client.BoardClient`), ``errors``, ``sim`` (the simulated
board), ``devices`` (fleet files with device URLs), ``emulator``/``renode`` (emulated boards).
"""


def _register_sim_urls() -> None:
    """Let ``serial.serial_for_url("sim://...")`` find :mod:`.protocol_sim` (pyserial's handler search)."""
    try:
        import serial
    except ImportError:  # pragma: no cover - pyserial is a dependency
        return
    if __name__ not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(__name__)


_register_sim_urls()
