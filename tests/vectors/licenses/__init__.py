"""The licenses vectors and their generator (``generate.py``)."""
