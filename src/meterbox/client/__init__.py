"""meterbox.client."""
