"""Host side of the serial link to boards (see ``docs/host-link.md`` and ``docs/protocol.md``).

``framing`` (packets and frames), ``transport`` (pyserial URLs, incl. ``sim://``), ``client``
(:class:`~tinyfed.firmware_bridge.client.BoardClient`), ``errors``, ``sim`` (the simulated
board), ``devices`` (fleet files with device URLs), ``emulator``/``renode`` (emulated boards).
"""
