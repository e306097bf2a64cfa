"""The vendor's local, read-only web dashboard (:mod:`.app` over :mod:`._data`).

Served by ``meterbox vendor dashboard`` (:mod:`meterbox.vendorkit.cli._dashboard`).
"""
