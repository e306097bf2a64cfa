"""Shared pytest configuration.

pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml), so the shared
helpers load as the ``support`` package; its fixture modules are registered here.
"""

pytest_plugins = ["support.postgres"]
