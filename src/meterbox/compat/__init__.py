"""meterbox.compat."""
