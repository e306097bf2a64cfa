"""The license notice (suspension) vectors and their generator (``generate.py``)."""
