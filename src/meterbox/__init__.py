"""meterbox: offline consumption-based and floating software licensing."""

__version__ = "0.1.0"
