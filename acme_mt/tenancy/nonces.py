"""Replay nonces (RFC 8555 §6.5), one pool per tenant.

A nonce is single-use and valid only at the tenant that issued it. One embedded
server process keeps them in memory; the worker processes of one server sign
them and share a spent set; a shared store keeps them for replicas.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from acme_mt.models import Account


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


@runtime_checkable
class AccountNonceService(NonceService, Protocol):
    """Nonces kept in a shared store that can also read the request's account.

    A request signed with a ``kid`` needs both its nonce redeemed and its
    account read; where each is a round trip to a database, doing both in
    one halves that cost of every such request.
    """

    async def redeem_for_account(self, nonce: str, account_id: str) -> tuple[Account | None, bool]:
        """The account (None if the tenant has none by that id) and whether the nonce
        was fresh, redeeming it if so, in one step.

        :raises TenantUnavailable: the store cannot be reached.
        """
        ...


class SpentNonces(Protocol):
    """The nonces some process already took, shared by every process that redeems."""

    async def spend(self, nonce_id: bytes, expires: int) -> bool:
        """Record ``nonce_id`` as taken until ``expires`` (epoch seconds); False if it was."""
        ...


class SignedNonces:
    """Nonces that any worker process of one server can check, each usable once.

    A nonce carries when it was made, random bits and an HMAC over both and
    the tenant id, under a key the workers share; issuing one writes nothing.
    Redeeming checks the MAC and the age, then records the nonce in a spent
    set every worker sees, so that only the first redemption anywhere counts.
    """

    def __init__(
        self,
        key: bytes,
        tenant_id: str,
        spent: SpentNonces,
        max_age_seconds: int = 900,
        clock: Callable[[], float] = time.time,
        *,
        clock_slack: int = 2,
    ) -> None:
        if len(key) < 32:
            raise ValueError("the nonce key needs at least 256 bits")
        self._key = key
        self._tenant = tenant_id.encode()
        self._spent = spent
        self._max_age = int(max_age_seconds)
        self._clock = clock
        #: Seconds a nonce may claim to come from the future (the makers' clocks differ).
        self._slack = int(clock_slack)

    async def issue(self) -> str:
        body = int(self._clock()).to_bytes(_STAMP, "big") + secrets.token_bytes(_RANDOM)
        return base64.urlsafe_b64encode(body + self._mac(body)).rstrip(b"=").decode()

    async def redeem(self, nonce: str) -> bool:
        """True the first time a nonce of this tenant, younger than the maximum age, comes back.

        :raises TenantUnavailable: the spent set cannot be reached.
        """
        claim = self.claim(nonce)
        return claim is not None and await self._spent.spend(*claim)

    def claim(self, nonce: str) -> tuple[bytes, int] | None:
        """The id and expiry (epoch seconds) under which to spend ``nonce``, if it is
        one of this tenant's, signed under this key and within its age; None if not.

        Spending it is the caller's: ``redeem`` does, and so may a store that
        spends it together with other work.
        """
        if not _SIGNED.fullmatch(nonce):
            return None
        raw = base64.urlsafe_b64decode(nonce + "==")
        body, mac = raw[: _STAMP + _RANDOM], raw[_STAMP + _RANDOM :]
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        made = int.from_bytes(body[:_STAMP], "big")
        now = self._clock()
        if not made - self._slack <= now <= made + self._max_age:
            return None
        return body, made + self._max_age

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, self._tenant + b"\0" + body, hashlib.sha256).digest()[:_MAC]


_STAMP, _RANDOM, _MAC = 5, 10, 15
_SIGNED = re.compile(r"[A-Za-z0-9_-]{40}")
