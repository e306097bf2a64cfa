"""meterbox.vendorkit."""
