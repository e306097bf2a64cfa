"""meterbox.vendor."""
