"""The ledger vectors and their generator (``generate.py``)."""
