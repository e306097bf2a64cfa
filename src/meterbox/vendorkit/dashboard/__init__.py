"""The vendor's local, read-only web dashboard (:mod:`.app` over :mod:`._data`).

Served by ``meterbox vendor dashboard`` (:mod:`meterbox.vendorkit.cli._dashboard`).
"""

from meterbox.vendorkit.dashboard._data import Source
from meterbox.vendorkit.dashboard.app import build_vendor_dashboard, is_loopback

__all__ = ["Source", "build_vendor_dashboard", "is_loopback"]
