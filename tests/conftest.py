"""Shared pytest configuration.

pytest imports this file with ``tests/`` on ``sys.path`` (the default "prepend" import
mode, and ``tests`` is not a package), so fixture modules beside it load by plain name.
"""

pytest_plugins = ["postgres_fixture"]

# Speed is measured by the benchmarks under bench/, never by unit tests: on a shared,
# loaded machine hypothesis's per-example deadline only turns slowness into flaky failures.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("meterbox", deadline=None, print_blob=True)
_hypothesis_settings.load_profile("meterbox")
