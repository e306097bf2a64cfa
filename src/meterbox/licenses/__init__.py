"""meterbox.licenses."""
