"""The `meterbox vendor` command group: one typer ``app`` and its commands.

Shape, chosen to be free of import cycles: :mod:`._common` creates ``app`` and holds
what every command shares (``--home``/``--store`` options, error rendering, exit
codes). Each command family is one module (:mod:`._keys`, :mod:`._issue`,
:mod:`._ingest`, :mod:`._bill`, :mod:`._anomalies`, :mod:`._dashboard`, :mod:`._tpm`) that imports
``app`` from :mod:`._common` and decorates its commands onto it. This ``__init__``
imports those modules, which registers the commands, and re-exports ``app``. No command
module imports this package's ``__init__``, so nothing is imported half-initialised.
"""

from __future__ import annotations

from meterbox.vendorkit.cli._common import app

# The command modules are imported for their side effect: each decorates its commands
# onto ``app``, and the import order is the order of ``meterbox vendor --help``, so
# the sorter must leave it alone.
# isort: off
from meterbox.vendorkit.cli import _keys, _issue, _notices  # noqa: F401
from meterbox.vendorkit.cli import _ingest, _bill  # noqa: F401
from meterbox.vendorkit.cli import _dashboard, _anomalies, _findings  # noqa: F401
from meterbox.vendorkit.cli import _tpm  # noqa: F401
# isort: on

__all__ = ["app"]
