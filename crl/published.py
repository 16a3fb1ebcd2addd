"""What the CRL publishers keep in memory, the cadence they sign on, and their errors
(RFC 5280 §5).

Numbers (§5.2.3) come from the clock in microseconds, so replicas that never
talk to each other still publish numbers that only grow; within one process
each number is strictly greater than the last. A full CRL and the delta signed
with it share one number, as §5.2.4 asks of CRLs of one scope issued together.

Cadence, from the tenant's ``crl_lifetime_hours`` (L, at most 168):

- a shard's full CRL: nextUpdate L after thisUpdate; re-signed every
  min(L/2, 6 h) and 2 s after a revocation; max-age up to 15 minutes;
- its delta: nextUpdate 1 h after thisUpdate; re-signed every 30 minutes and
  2 s after a revocation; max-age up to 5 minutes;
- the root CRL: nextUpdate 7 days after thisUpdate; re-signed daily and when a
  tenant CA is revoked; max-age up to 15 minutes.

Shard ``n`` lives at ``/{tenant}/crl/n.crl`` and its delta at
``/{tenant}/crl/n-delta.crl``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.issuance import Issuer
from acme_mt.issuance.crl import CrlDraft
from acme_mt.tenancy.context import TenantContext

#: Re-signing is debounced: this long after the last revocation of a tenant...
DEBOUNCE_SECONDS = 2.0
#: ...but never later than this after the first one still waiting.
MAX_DEBOUNCE_SECONDS = 10.0
#: A full CRL waits this many times its last build time before it is re-signed
#: for a revocation; meanwhile the delta carries the revocation. A small CRL
#: signs in milliseconds, so its cool-down ends before the debounce does.
FULL_COOLDOWN_FACTOR = 30.0
FULL_REFRESH_MAX = timedelta(hours=6)
DELTA_LIFETIME = timedelta(hours=1)
ROOT_LIFETIME = timedelta(days=7)
ROOT_REFRESH = timedelta(days=1)
#: A delta repeats revocations this long before its base was read, so a
#: revocation committed while the base was being read is never missed.
DELTA_OVERLAP = timedelta(minutes=1)
MAX_AGE_FULL = 900
MAX_AGE_DELTA = 300

#: How long a request waits for a tenant's first CRLs before it gets a 503.
FIRST_BUILD_WAIT = 20.0
#: After a failed signing, requests get a 503 for this long instead of a new attempt.
RETRY_SECONDS = 10.0
#: Above this many revoked serials at once, every shard is re-signed without looking them up.
SHARD_LOOKUP_LIMIT = 64


class CrlError(Exception):
    """Root of the CRL package's errors."""


class CrlUnavailable(CrlError):
    """A tenant's CRLs are not signed yet or could not be signed; try again shortly."""


class TenantResolver(Protocol):
    """Finds the live context of a tenant (``acme_mt.tenancy.directory.TenantDirectory``)."""

    async def resolve(self, slug: str) -> TenantContext | None: ...


_NAME_RE = re.compile(r"(0|[1-9][0-9]{0,3})(-delta)?\.crl")


def parse_crl_name(name: str) -> tuple[int, bool] | None:
    """``3.crl`` is (3, False) and ``3-delta.crl`` (3, True); anything else None."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2) is not None


def delta_crl_url(issuer: Issuer, shard: int) -> str:
    """Where the delta of a shard is published (its full CRL's Freshest CRL)."""
    return f"{issuer.base_url}/crl/{shard}-delta.crl"


def full_refresh(lifetime: timedelta) -> timedelta:
    """How often a full CRL is re-signed without revocations: half its life, at most 6 h."""
    return min(lifetime / 2, FULL_REFRESH_MAX)


class CrlNumbers:
    """CRL numbers from the clock in microseconds, strictly increasing in this process.

    Limitation: replicas whose clocks disagree by more than the time between
    two signatures of one shard can publish a number lower than a peer's last;
    keeping the last number per scope in the shared store would end that.
    """

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._last = 0

    def next(self) -> int:
        self._last = max(self._clock_ns() // 1000, self._last + 1)
        return self._last


@dataclass(frozen=True)
class PublishedCrl:
    """One signed CRL as served: DER plus what the HTTP caching headers need."""

    der: bytes
    number: int
    this_update: datetime
    next_update: datetime
    entries: int

    @classmethod
    def from_signed(cls, draft: CrlDraft, crl: x509.CertificateRevocationList) -> PublishedCrl:
        return cls(
            der=crl.public_bytes(serialization.Encoding.DER),
            number=draft.number,
            this_update=draft.this_update,
            next_update=draft.next_update,
            entries=len(draft.entries),
        )

    @property
    def etag(self) -> str:
        """Unquoted: every signature has a new number, so the number tells versions apart."""
        return f"{self.number:x}"


@dataclass
class ShardCrls:
    """A shard's full CRL, the delta against it, and when each is due again."""

    full: PublishedCrl
    delta: PublishedCrl
    cutoff: datetime
    full_due: datetime
    delta_due: datetime
    built_at: float
    build_seconds: float
    stale: bool = False

    def cooldown_end(self, factor: float = FULL_COOLDOWN_FACTOR) -> float:
        """When (loop time) the full CRL may be re-signed for a revocation."""
        return self.built_at + factor * self.build_seconds

    def cooled_down(self, now: float, factor: float = FULL_COOLDOWN_FACTOR) -> bool:
        return now >= self.cooldown_end(factor)


@dataclass(eq=False)
class TenantCrls:
    """One tenant's published shards and the single worker that signs them."""

    id: str
    slug: str
    shards: dict[int, ShardCrls] = field(default_factory=dict)
    want_full: set[int] = field(default_factory=set)
    want_delta: set[int] = field(default_factory=set)
    worker: asyncio.Task[None] | None = None
    failed_at: float | None = None
    pending: set[str] = field(default_factory=set)
    first_pending: float | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def busy(self) -> bool:
        return self.worker is not None and not self.worker.done()

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
