"""A token bucket per tenant for the OCSP signatures a stranger can ask for.

Pre-signed responses cost nothing to serve, but an answer about a serial the
tenant never issued, a request with a nonce (RFC 8954) and a request naming
several certificates each need a fresh signature (RFC 6960 §4.2). Those draw
on the tenant's bucket; an empty bucket answers ``tryLater`` (§4.2.1), so a
flood costs one tenant's budget and never another's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# Limitation: the rate and burst are the same for every tenant; a field of the
# tenant's tier or policy would let a tenant with many nonce-insisting
# appliances buy more. Each process keeps its own bucket, so the worker
# processes of one server and the replicas behind a balancer each allow the
# full rate; a bucket in the shared store would bound them together.
#: Fresh signatures per second per tenant, and how many may come at once.
LIVE_SIGNATURES_PER_SECOND = 20.0
LIVE_SIGNATURE_BURST = 100


class TokenBucket:
    """Allows ``rate`` events per second on average and ``burst`` at once."""

    def __init__(
        self,
        rate: float = LIVE_SIGNATURES_PER_SECOND,
        burst: int = LIVE_SIGNATURE_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and burst")
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def give_back(self) -> None:
        """Return a token that was taken for work that turned out to be free."""
        self._tokens = min(self._burst, self._tokens + 1.0)
