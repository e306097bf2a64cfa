"""Builders, fixtures and helpers shared by the tests, the benchmarks and the vector generators.

No tests live here. pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in
pyproject.toml), so test modules import these as ``support.<name>``; the vector
generators run from ``tests/`` (``python -m vectors.<name>.generate``) and import them
the same way. Fixtures defined here are registered by the conftest.py files.
"""
