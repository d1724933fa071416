"""The link to a board: framing, transports, the board client, device fleets, link errors."""
