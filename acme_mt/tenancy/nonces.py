"""Replay nonces (RFC 8555 §6.5), one pool per tenant.

A nonce is single-use and valid only at the tenant that issued it. The embedded
back end keeps them in process; a shared store keeps them for replicas.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from typing import Protocol


class NonceService(Protocol):
    """Issue and redeem nonces for one tenant."""

    async def issue(self) -> str: ...

    async def redeem(self, nonce: str) -> bool:
        """True exactly once for a nonce this service issued and that has not expired."""
        ...


class InMemoryNonces:
    """Nonces held in this process: bounded in count and age.

    When full, the oldest nonce is dropped; a client holding it gets badNonce
    and retries with the fresh nonce that error carries, as RFC 8555 §6.5 intends.
    """

    def __init__(self, max_nonces: int = 50_000, max_age_seconds: float = 3600.0) -> None:
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._max_nonces = max_nonces
        self._max_age = max_age_seconds

    async def issue(self) -> str:
        nonce = secrets.token_urlsafe(16)
        self._nonces[nonce] = time.monotonic()
        while len(self._nonces) > self._max_nonces:
            self._nonces.popitem(last=False)
        return nonce

    async def redeem(self, nonce: str) -> bool:
        issued = self._nonces.pop(nonce, None)
        return issued is not None and time.monotonic() - issued <= self._max_age
