"""The whole `meterbox vendor` command group.

:mod:`meterbox.vendorkit.cli` holds the base commands and the list of modules that add
more; registering those here, not there, lets each of them import the base module
without an import cycle.
"""

from __future__ import annotations

import importlib

from meterbox.vendorkit.cli import COMMAND_MODULES, app

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)

__all__ = ["app"]
