"""Per-tenant certificate revocation lists (RFC 5280 §5): full, delta and sharded.

Each tenant's CA publishes one full CRL per shard at ``/{tenant}/crl/{n}.crl``
and a delta of it at ``/{tenant}/crl/{n}-delta.crl``; the provider root
publishes ``/root.crl``. They are signed through ``acme_mt.issuance`` on a
schedule and shortly after revocations, and served from memory.
``setup_crl`` is the one entry point.
"""

from __future__ import annotations

from crl.handlers import setup_crl

__all__ = ["setup_crl"]
