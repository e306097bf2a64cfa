"""The cryptolens vectors and their generator (``generate.py``)."""
