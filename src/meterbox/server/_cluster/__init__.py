"""Cluster mode: nodes that share seats, leases and quota through etcd (docs/adr/0024, 0025)."""
