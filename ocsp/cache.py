"""Pre-signed OCSP responses of one tenant, kept in memory (RFC 5019 §2.2, §6).

Each issued certificate's response is signed ahead of time and kept here under
its CertID (hash algorithm, serial, and the CertID bytes when the client
encoded them unusually), with the RFC 5019 caching headers that do not change
until it is re-signed. A second map remembers which request, exactly as sent
(the raw GET path or the POST body), named which entry, so a repeated request
is answered without decoding or parsing it again; that map is bounded and
simply forgotten when full.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from email.utils import format_datetime

from multidict import CIMultiDict

logger = logging.getLogger(__name__)

#: (hash name, serial, CertID bytes or b"" for the usual encoding).
CacheKey = tuple[str, int, bytes]

OCSP_RESPONSE = "application/ocsp-response"

#: How many distinct request encodings one tenant remembers before starting over.
MEMO_LIMIT = 100_000


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


class CachedResponse:
    """A signed response and its RFC 5019 caching headers (§6.2)."""

    __slots__ = (
        "_fixed",
        "_headers",
        "_second",
        "der",
        "etag",
        "expires_at",
        "next_update",
        "not_after",
        "serial",
        "this_update",
    )

    def __init__(
        self,
        der: bytes,
        serial: int,
        this_update: datetime,
        next_update: datetime,
        not_after: datetime,
    ) -> None:
        self.der = der
        self.serial = serial
        self.this_update = this_update
        self.next_update = next_update
        #: The certificate's own expiry: past it the entry is not re-signed.
        self.not_after = not_after
        self.etag = hashlib.sha256(der).hexdigest()[:32]
        self.expires_at = next_update.timestamp()
        self._fixed = {
            "Content-Type": OCSP_RESPONSE,
            "ETag": f'"{self.etag}"',
            "Last-Modified": http_date(this_update),
            "Expires": http_date(next_update),
        }
        self._second = -1
        self._headers: CIMultiDict[str] = CIMultiDict(self._fixed)

    def max_age(self, now: float) -> int:
        """Seconds a cache may keep this response: up to its nextUpdate (RFC 5019 §6.2)."""
        return max(0, int(self.expires_at - now))

    def headers(self, now: float) -> CIMultiDict[str]:
        """Content-Type, Cache-Control, ETag, Last-Modified and Expires, shared: read only.

        Only max-age moves, once a second, so the set is built once a second.
        aiohttp's ``Response`` copies the headers it is given, so a response
        built from this set can change its own without touching it.
        """
        second = int(now)
        if second != self._second:
            cache_control = f"max-age={self.max_age(now)}, public, no-transform, must-revalidate"
            self._headers = CIMultiDict({**self._fixed, "Cache-Control": cache_control})
            self._second = second
        return self._headers


# Limitation: every process keeps every served tenant's responses in memory
# (about 2 KB a certificate) and asks the store for changes every few seconds,
# one query per tenant; with thousands of busy tenants on PostgreSQL a change
# feed (LISTEN/NOTIFY naming the tenants that changed) would replace the polls.
class ResponseCache:
    """One tenant's pre-signed responses, by CertID and by serial."""

    def __init__(self, memo_limit: int = MEMO_LIMIT) -> None:
        self._entries: dict[CacheKey, CachedResponse] = {}
        self._by_serial: dict[int, set[CacheKey]] = {}
        self._memo: dict[str | bytes, CacheKey] = {}
        self._memo_limit = memo_limit

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> CachedResponse | None:
        return self._entries.get(key)

    def for_request(self, as_sent: str | bytes) -> CachedResponse | None:
        """The entry a request sent exactly so (GET path, POST body) was answered from."""
        key = self._memo.get(as_sent)
        return None if key is None else self._entries.get(key)

    def remember(self, as_sent: str | bytes, key: CacheKey) -> None:
        """Note that a request sent so names ``key``, so it needs no parsing next time."""
        if len(self._memo) >= self._memo_limit:
            self._memo.clear()
        self._memo[as_sent] = key

    def put(self, key: CacheKey, response: CachedResponse) -> None:
        self._entries[key] = response
        self._by_serial.setdefault(key[1], set()).add(key)

    def keys_of(self, serial: int) -> set[CacheKey]:
        return set(self._by_serial.get(serial, ()))

    def drop(self, key: CacheKey) -> None:
        self._entries.pop(key, None)
        keys = self._by_serial.get(key[1])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_serial[key[1]]

    def items(self) -> Iterator[tuple[CacheKey, CachedResponse]]:
        return iter(list(self._entries.items()))

    def due(self, refresh_at: datetime) -> list[CacheKey]:
        """Entries signed at or before ``refresh_at``, oldest first."""
        stale = [
            (r.this_update, k) for k, r in self._entries.items() if r.this_update <= refresh_at
        ]
        return [key for _, key in sorted(stale)]

    def drop_all(self, keys: Iterable[CacheKey]) -> None:
        for key in keys:
            self.drop(key)
