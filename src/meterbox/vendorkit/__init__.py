"""meterbox.vendorkit: the vendor's toolkit (keys, issuance, ingest, billing, dashboard).

The package itself exports nothing; each module (``keys``, ``ingest``, ``billing``,
``store``, ``clockcheck``, ``anomaly``, ``dashboard``, ``cli``) is its own entry point.
"""

__all__: list[str] = []
