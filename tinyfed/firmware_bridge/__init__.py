"""Host side of the boards, split by the role each module plays on the data path.

- ``compile``: what is sent to a board, made on the host: TFMB fragment blobs, TFTR training
  programs, local-data images, and the layout rules they share (``compile.layout``).
- ``link``: how bytes reach a board: framing, pyserial transports, :class:`BoardClient`,
  device fleets and the link's typed errors (``docs/host-link.md``, ``docs/protocol.md``).
- ``twin``: the board in Python: ``sim://`` boards and the numpy twins of the C engines.
- ``emulate``: boards in QEMU or Renode, and the firmware build that they and real boards run.
"""
