"""The board in Python: ``sim://`` boards and the numpy twins of the firmware engines."""
