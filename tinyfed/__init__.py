"""tinyfed: federated learning on fleets of microcontrollers."""

__version__ = "0.1.0"
