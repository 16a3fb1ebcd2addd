"""Per-tenant OCSP responders (RFC 6960, RFC 5019) with delegated, pre-signed responses.

Each tenant's CA certifies a short-lived delegated signer whose key lives in
the tenant's key partition; every issued certificate's response is signed
ahead of time and served from memory with RFC 5019 caching headers at
``/{tenant}/ocsp`` (POST) and ``/{tenant}/ocsp/{base64}`` (GET).
``setup_ocsp`` is the one entry point.
"""

from __future__ import annotations

from ocsp.handlers import setup_ocsp

__all__ = ["setup_ocsp"]
