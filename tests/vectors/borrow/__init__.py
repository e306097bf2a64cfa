"""The borrow-token vectors and their generator (``generate.py``)."""
