"""Shared pytest configuration.

pytest imports this file with ``tests/`` on ``sys.path`` (the default "prepend" import
mode, and ``tests`` is not a package), so fixture modules beside it load by plain name.
"""

pytest_plugins = ["postgres_fixture", "tpm_fixture"]
