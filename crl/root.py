"""The provider root's CRL (RFC 5280 §5): the tenant CAs the root no longer vouches for.

Each tenant CA certificate names ``/root.crl`` in its CRL distribution point.
The root CRL lists the CA of every tenant whose registry status is ``revoked``
(reason unspecified) or ``offboarded`` (cessationOfOperation, §5.3.1) until that
CA certificate expires. It is signed by the provider root key through
``acme_mt.issuance``, every day and whenever that list changes, with numbers
from the same clock-based sequence as tenant CRLs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from datetime import datetime

from cryptography import x509

from acme_mt.issuance.crl import CrlDraft, RevokedSerial, sign_crls
from acme_mt.keystores.base import SigningKey
from acme_mt.models import utcnow
from acme_mt.storage.base import RegistryStore, TenantRecord
from crl.published import (
    FIRST_BUILD_WAIT,
    RETRY_SECONDS,
    ROOT_LIFETIME,
    ROOT_REFRESH,
    CrlNumbers,
    CrlUnavailable,
    PublishedCrl,
)

logger = logging.getLogger(__name__)

#: Registry statuses whose CA the root CRL lists, with their RFC 5280 §5.3.1 reason.
REVOKED_STATUSES = {"revoked": 0, "offboarded": 5}


class RootCrlPublisher:
    """Signs the root CRL from the registry and keeps it for requests."""

    def __init__(
        self,
        registry: RegistryStore,
        root_certificate: x509.Certificate,
        root_key: SigningKey,
        *,
        executor: Executor | None = None,
        numbers: CrlNumbers | None = None,
    ) -> None:
        self._registry = registry
        self._root = root_certificate
        self._key = root_key
        self._executor = executor
        self._numbers = numbers or CrlNumbers()
        self._published: PublishedCrl | None = None
        self._listed: dict[str, RevokedSerial] = {}
        self._seen: dict[str, datetime] = {}
        self._ca_serials: dict[str, tuple[str, datetime]] = {}
        self._due: datetime | None = None
        self._worker: asyncio.Task[None] | None = None
        self._failed_at: float | None = None

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def current(self) -> PublishedCrl:
        """The root CRL, waiting for its first signing if needed.

        :raises CrlUnavailable: not signed within the wait, or signing failed.
        """
        if self._published is not None:
            return self._published
        loop = asyncio.get_running_loop()
        busy = self._worker is not None and not self._worker.done()
        failed_at = None if busy else self._failed_at
        if failed_at is not None and loop.time() - failed_at < RETRY_SECONDS:
            raise CrlUnavailable()
        worker = self._start()
        try:
            await asyncio.wait_for(asyncio.shield(worker), FIRST_BUILD_WAIT)
        except TimeoutError:
            raise CrlUnavailable() from None
        if self._published is None:
            raise CrlUnavailable()
        return self._published

    async def tick(self) -> None:
        """Re-sign when due or when the set of revoked tenant CAs changed."""
        if self._worker is not None and not self._worker.done():
            return
        now = utcnow()
        listed = self._revoked_cas(await self._registry.list_tenants(), now)
        due = self._due is None or now >= self._due
        if due or self._published is None or set(listed) != set(self._listed):
            self._start()

    def _start(self) -> asyncio.Task[None]:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        return self._worker

    async def _work(self) -> None:
        try:
            await self._sign()
        except Exception:
            logger.exception("signing the root CRL failed")
            self._failed_at = asyncio.get_running_loop().time()
        else:
            self._failed_at = None

    async def _sign(self) -> None:
        now = utcnow()
        listed = self._revoked_cas(await self._registry.list_tenants(), now)
        draft = CrlDraft(
            issuer=self._root,
            number=self._numbers.next(),
            this_update=now,
            next_update=now + ROOT_LIFETIME,
            entries=list(listed.values()),
        )
        [crl] = await sign_crls([draft], self._key, executor=self._executor)
        self._published = PublishedCrl.from_signed(draft, crl)
        self._listed = listed
        self._due = now + ROOT_REFRESH
        logger.info("published root CRL number %d, %d entries", draft.number, len(listed))

    def _revoked_cas(
        self, records: Sequence[TenantRecord], now: datetime
    ) -> dict[str, RevokedSerial]:
        """Unexpired CAs of revoked or offboarded tenants, by tenant id."""
        listed: dict[str, RevokedSerial] = {}
        for record in records:
            reason = REVOKED_STATUSES.get(record.status)
            if reason is None:
                continue
            serial, not_after = self._ca_serial(record)
            if not_after <= now:
                continue
            # Limitation: the registry keeps neither when nor why a tenant CA
            # was revoked, and no command revokes one yet; the date is when
            # this process first saw the status. Recording both on the tenant
            # record when it changes would end that.
            revoked_at = self._seen.setdefault(record.id, now)
            listed[record.id] = RevokedSerial(serial, revoked_at, reason)
        return listed

    def _ca_serial(self, record: TenantRecord) -> tuple[str, datetime]:
        cached = self._ca_serials.get(record.id)
        if cached is None:
            certificate = x509.load_pem_x509_certificate(record.ca_certificate_pem.encode())
            cached = (format(certificate.serial_number, "x"), certificate.not_valid_after_utc)
            self._ca_serials[record.id] = cached
        return cached
