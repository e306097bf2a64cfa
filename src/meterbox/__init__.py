"""meterbox: offline consumption-based and floating software licensing."""

__all__ = ["__version__"]

__version__ = "0.1.0"
