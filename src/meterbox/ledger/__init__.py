"""meterbox.ledger."""
