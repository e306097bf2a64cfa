"""meterbox.server."""
