"""Shared pytest configuration.

pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml), so the shared
helpers load as the ``support`` package; its fixture modules are registered here.
"""

pytest_plugins = [
    "support.postgres",
    "support.tpm",
    "support.etcd",
    "support.cluster",
    "support.netns",
]

# Speed is measured by the benchmarks under bench/, never by unit tests: on a shared,
# loaded machine hypothesis's per-example deadline only turns slowness into flaky failures.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("meterbox", deadline=None, print_blob=True)
_hypothesis_settings.load_profile("meterbox")
