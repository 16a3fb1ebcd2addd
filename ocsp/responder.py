"""One tenant's OCSP responder (RFC 6960 §2.2, §4.2; RFC 5019 §2.2).

A request is answered for this tenant's CA only: each CertID's issuerNameHash
and issuerKeyHash must be those of the tenant CA under the CertID's own hash
algorithm, or the answer is ``unauthorized``. A serial the tenant issued is
``good`` or ``revoked`` (with time and reason) as its store says; any other
serial, pending and abandoned ones included, is ``unknown``, never ``good``.

Responses about issued certificates are signed ahead of time: at start for
every unexpired certificate, at issuance, within seconds of a revocation, and
again once half of their validity window has passed. Answers that need a fresh
signature (an unknown serial, a nonce, several CertIDs) are never cached and
draw on the tenant's token bucket.

Every pre-signed response to the SHA-1 CertID is also kept in the tenant's
store, and :meth:`TenantResponder.pull` takes what other processes kept there:
replicas sharing a PostgreSQL store serve the same bytes, learn of each other's
issuance and revocation within a pull, and leave the periodic refresh to
whichever holds the tenant's lease (``ocsp.service``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from typing import Any

from acme_mt.errors import AcmeMtError
from acme_mt.issuance.ocsp import (
    CERT_ID_HASHES,
    CertStatus,
    OcspSigner,
    SingleAnswer,
    issuer_hashes,
    sign_response,
    sign_responses,
)
from acme_mt.models import CertificateRecord, CertificateStatus, utcnow
from acme_mt.storage.base import OcspResponseRecord
from acme_mt.tenancy.context import TenantContext
from ocsp.cache import CachedResponse, CacheKey, ResponseCache
from ocsp.limits import TokenBucket
from ocsp.request import CertRequest, OcspQuery, TryLater, Unauthorized
from ocsp.signers import SignerKeeper

logger = logging.getLogger(__name__)

#: thisUpdate to nextUpdate of a response about an issued certificate.
RESPONSE_WINDOW = timedelta(hours=24)
#: Re-sign a response once this much of its window has passed.
REFRESH_AFTER = RESPONSE_WINDOW / 2
#: nextUpdate of an ``unknown`` answer: a pending serial may be issued soon.
UNKNOWN_WINDOW = timedelta(hours=1)
#: Certificates read and signed per round trip while pre-signing.
BATCH = 256
#: Below this many due serials, refresh reads them one by one instead of scanning.
POINT_READS = 64

#: How long issued serials gather before they are pre-signed together.
PRESIGN_GATHER = 0.05
#: A certificate this young may have its response on the way from the process
#: that issued it (``created`` counts whole seconds); how long, and how often,
#: another process looks for it in the store before signing its own.
FRESH_ISSUANCE = timedelta(seconds=3)
KEPT_WAIT = 0.3
KEPT_POLL = 0.02

#: Certificate statuses that mean the serial was issued.
_ISSUED = (CertificateStatus.VALID, CertificateStatus.REVOKED)

#: The CertID every pre-signed response answers: SHA-1, as RFC 5019 §2.1.1 asks.
PRESIGN_HASH = "sha1"
#: Responses read from the store per round trip.
PULL_BATCH = 1024
#: How far back each pull looks again, for writes that committed out of order.
PULL_OVERLAP = timedelta(seconds=30)
_OVERLAP_SECONDS = PULL_OVERLAP.total_seconds()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TenantResponder:
    """Answers OCSP requests about one tenant's certificates."""

    def __init__(
        self,
        tenant: TenantContext,
        executor: Executor | None = None,
        clock: Callable[[], datetime] = utcnow,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.tenant = tenant
        self.cache = ResponseCache()
        self.signers = SignerKeeper(tenant)
        self.warmed = False
        self._executor = executor
        self._clock = clock
        self._bucket = bucket or TokenBucket()
        self._hashes = {
            name: issuer_hashes(tenant.issuer.certificate, name) for name in CERT_ID_HASHES
        }
        self._inflight: dict[CacheKey, asyncio.Future[CachedResponse | None]] = {}
        # Revocations seen, counted, and the count at each serial's revocation:
        # a status read before a serial's revocation must not replace what
        # was signed after it.
        self._generation = 0
        self._revoked_in: dict[int, int] = {}
        #: Serials whose cached responses already say revoked.
        self._known_revoked: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Serials issued here and not yet pre-signed, each with the future its
        #: requests wait on meanwhile (None where another signing was under way).
        self._presign_due: list[tuple[int, asyncio.Future[CachedResponse | None] | None]] = []
        #: The newest ``stored_at`` seen in the store; None before the first pull.
        self._pulled_until: datetime | None = None
        #: When (loop time) ``_pulled_until`` last moved.
        self._moved_at = 0.0

    def matches(self, cert: CertRequest) -> bool:
        """Whether a CertID names this tenant's CA (§4.1.1, both hashes)."""
        return self._hashes.get(cert.hash_name) == (cert.issuer_name_hash, cert.issuer_key_hash)

    def _now(self) -> datetime:
        return self._clock().replace(microsecond=0)

    # Answering requests.

    async def answer(
        self, query: OcspQuery, as_sent: str | bytes, *, nonce_allowed: bool
    ) -> CachedResponse | bytes:
        """A cached response, or the DER of a freshly signed one.

        ``as_sent`` is the request as it arrived (GET path or POST body), which
        the cache remembers for requests answered from it.

        :raises Unauthorized: a CertID names another issuer.
        :raises TryLater: a fresh signature is needed and the bucket is empty.
        """
        if not all(self.matches(cert) for cert in query.certs):
            raise Unauthorized("the request names another issuer")
        nonce = query.nonce if nonce_allowed else None
        if len(query.certs) > 1 or nonce is not None:
            self._charge()
            return await self._sign_live(query.certs, nonce)

        cert = query.certs[0]
        key = cert.cache_key
        cached = self.cache.get(key)
        if cached is None:
            # Once pre-signing is done, a miss is most likely a serial never issued.
            charged = self.warmed and key not in self._inflight
            if charged:
                self._charge()
            cached = await self._ensure(cert)
            if cached is None:
                if not charged:
                    self._charge()
                return await self._sign_live(query.certs, None)
            if charged:
                self._bucket.give_back()
        if query.nonce is None:
            self.cache.remember(as_sent, key)
        return cached

    def _charge(self) -> None:
        if not self._bucket.take():
            raise TryLater("too many fresh OCSP signatures for this tenant")

    async def _ensure(self, cert: CertRequest, *, kept: bool = True) -> CachedResponse | None:
        """The cached response for an issued serial, signing it once if missing.

        With ``kept`` a response another process signed and kept is taken
        first; the process that issued the certificate signs without looking.
        """
        key = cert.cache_key
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CachedResponse | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            read_in = self._generation
            record = await self._lookup(cert.serial)
            result = None
            if record is not None and kept:
                result = await self._kept_elsewhere(cert)
                if result is None and self._clock() - record.created <= FRESH_ISSUANCE:
                    result = await self._await_kept(cert)
            if record is not None and result is None:
                result = (await self._sign_and_keep([(cert, record)], read_in))[0]
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # waiters re-raise it; nobody else need see it
            raise
        finally:
            del self._inflight[key]

    async def _kept_elsewhere(self, cert: CertRequest) -> CachedResponse | None:
        """The response another process (the one that issued) signed and kept, if any.

        Taking it rather than signing here keeps every worker and replica
        answering with the same bytes, so ETags and caches agree.
        """
        if cert.cache_key != self.presign_request(cert.serial).cache_key:
            return None
        try:
            record = await self.tenant.store.get_ocsp_response(format(cert.serial, "x"))
        except AcmeMtError as exc:
            logger.warning("OCSP read of tenant %s failed: %s", self.tenant.slug, exc)
            return None
        if record is not None:
            self._take(record, self._clock())
        return self.cache.get(cert.cache_key)

    async def _await_kept(self, cert: CertRequest) -> CachedResponse | None:
        """The response of a certificate issued moments ago, which its issuing process
        is pre-signing and will keep; None if it does not arrive in ``KEPT_WAIT``.

        Signing here instead would give the serial two responses with different
        bytes, one from each process, until the next refresh.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KEPT_WAIT
        while loop.time() < deadline:
            await asyncio.sleep(KEPT_POLL)
            result = await self._kept_elsewhere(cert)
            if result is not None:
                return result
        return None

    async def _lookup(self, serial: int) -> CertificateRecord | None:
        record = await self.tenant.store.get_certificate(format(serial, "x"))
        if record is None or record.status not in _ISSUED:
            return None
        return record

    async def _sign_live(self, certs: Sequence[CertRequest], nonce: bytes | None) -> bytes:
        records = [await self._lookup(cert.serial) for cert in certs]
        now = self._now()
        signer = await self.signers.current(now)
        answers = [self._single(c, r, now, signer) for c, r in zip(certs, records, strict=True)]
        return await sign_response(signer, answers, nonce, self._executor)

    def _single(
        self, cert: CertRequest, record: CertificateRecord | None, now: datetime, signer: OcspSigner
    ) -> SingleAnswer:
        status = CertStatus.UNKNOWN
        if record is not None:
            revoked = record.status == CertificateStatus.REVOKED
            status = CertStatus.REVOKED if revoked else CertStatus.GOOD
        window = UNKNOWN_WINDOW if record is None else RESPONSE_WINDOW
        return SingleAnswer(
            hash_name=cert.hash_name,
            issuer_name_hash=cert.issuer_name_hash,
            issuer_key_hash=cert.issuer_key_hash,
            serial=cert.serial,
            status=status,
            this_update=now,
            next_update=min(now + window, signer.not_after),
            revoked_at=record.revoked_at if record else None,
            reason=record.revocation_reason if record else None,
            cert_id_der=cert.cert_id_der,
        )

    # Pre-signing.

    def presign_request(self, serial: int) -> CertRequest:
        """The CertID pre-signed for every issued serial: SHA-1, NULL parameters."""
        name_hash, key_hash = self._hashes[PRESIGN_HASH]
        return CertRequest(PRESIGN_HASH, name_hash, key_hash, serial)

    async def _sign_and_keep(
        self, pairs: Sequence[tuple[CertRequest, CertificateRecord]], read_in: int
    ) -> list[CachedResponse]:
        """Sign one response per (CertID, record) and cache each unless revoked meanwhile.

        ``read_in`` is the revocation count taken before the records were read;
        a serial revoked after that keeps what its revocation signed.
        """
        now = self._now()
        signer = await self.signers.current(now)
        answers = [self._single(cert, record, now, signer) for cert, record in pairs]
        signed = await sign_responses(signer, answers, self._executor)
        responses = []
        shared = []
        for (cert, record), answer, der in zip(pairs, answers, signed, strict=True):
            response = CachedResponse(der, cert.serial, now, answer.next_update, record.not_after)
            revoked = answer.status is CertStatus.REVOKED
            if self._revoked_in.get(cert.serial, 0) <= read_in:
                self.cache.put(cert.cache_key, response)
                if revoked:
                    self._known_revoked.add(cert.serial)
                if cert.cache_key == self.presign_request(cert.serial).cache_key:
                    shared.append(_record(response, revoked))
            responses.append(response)
        await self._share(shared)
        return responses

    async def _share(self, records: list[OcspResponseRecord]) -> None:
        """Keep responses in the store for other processes; a failure costs only that."""
        if not records:
            return
        try:
            await self.tenant.store.save_ocsp_responses(records)
        except AcmeMtError as exc:
            logger.warning("OCSP responses of tenant %s not shared: %s", self.tenant.slug, exc)

    async def pull(self) -> int:
        """Take the responses other processes kept since the last pull; how many were new.

        For ``PULL_OVERLAP`` after the newest response it saw moved on, each
        pull looks that much further back, since a write may commit after a
        later one; taking a response twice changes nothing. Once the store has
        been quiet that long, a pull reads only what is newer.
        """
        loop = asyncio.get_running_loop()
        since = _EPOCH if self._pulled_until is None else self._pulled_until
        if self._pulled_until is not None and loop.time() - self._moved_at < _OVERLAP_SECONDS:
            since = self._pulled_until - PULL_OVERLAP
        taken = 0
        now = self._clock()
        while True:
            records = await self.tenant.store.list_ocsp_responses(since, PULL_BATCH)
            for record in records:
                taken += self._take(record, now)
                stored = record.stored_at
                if stored is not None and (
                    self._pulled_until is None or stored > self._pulled_until
                ):
                    self._pulled_until = stored
                    self._moved_at = loop.time()
            last = records[-1].stored_at if records else None
            if len(records) < PULL_BATCH or last is None or last <= since:
                break
            since = last
        return taken

    def _take(self, record: OcspResponseRecord, now: datetime) -> int:
        """Cache a stored response unless this process holds a newer one; 1 if taken.

        A revoked response is taken over any good one, and a good one never
        replaces what this process knows to be revoked. One past half its
        window (stored before a long stop, say) is left for this process to
        sign afresh.
        """
        if record.not_after <= now or record.this_update <= now - REFRESH_AFTER:
            return 0  # expired, or due to be signed again: signing it here is better
        serial = int(record.serial, 16)
        key = self.presign_request(serial).cache_key
        known_revoked = serial in self._known_revoked or serial in self._revoked_in
        if not record.revoked and known_revoked:
            return 0
        cached = self.cache.get(key)
        if cached is not None:
            if cached.der == record.der:
                return 0
            learns_revocation = record.revoked and serial not in self._known_revoked
            if cached.this_update > record.this_update and not learns_revocation:
                return 0
        response = CachedResponse(
            record.der, serial, record.this_update, record.next_update, record.not_after
        )
        self.cache.put(key, response)
        if record.revoked:
            self._known_revoked.add(serial)
        return 1

    async def warm(self, *, leave_fresh: bool = False) -> int:
        """Take what the store keeps, then pre-sign every unexpired certificate still missing.

        With ``leave_fresh``, certificates issued in the last ``FRESH_ISSUANCE``
        are left to the process that issued them, which is pre-signing them,
        so that each serial gets one response.
        """
        try:
            await self.pull()
        except AcmeMtError as exc:
            logger.warning("stored OCSP responses of %s unreadable: %s", self.tenant.slug, exc)
        signed = 0
        after = ""
        while True:
            read_in = self._generation
            records = await self.tenant.store.list_certificates(after, BATCH)
            if not records:
                break
            after = records[-1].serial
            now = self._clock()
            pairs = []
            for record in records:
                cert = self.presign_request(int(record.serial, 16))
                # One issued moments ago is being pre-signed by the process that issued it.
                fresh = leave_fresh and now - record.created <= FRESH_ISSUANCE
                if record.not_after > now and not fresh and self.cache.get(cert.cache_key) is None:
                    pairs.append((cert, record))
            if pairs:
                signed += len(await self._sign_and_keep(pairs, read_in))
        self.warmed = True
        return signed

    async def refresh(self) -> int:
        """Re-sign every response past half its window; drop those of expired certificates."""
        now = self._clock()
        due = self.cache.due(now - REFRESH_AFTER)
        if not due:
            return 0
        by_serial: dict[int, list[CacheKey]] = {}
        for key in due:
            by_serial.setdefault(key[1], []).append(key)
        read_in = self._generation
        records = await self._records(by_serial)
        pairs = []
        for serial, keys in by_serial.items():
            record = records.get(serial)
            if record is None or record.not_after <= now:
                self.cache.drop_all(keys)
                continue
            pairs += [(_request_for(key, self._hashes), record) for key in keys]
        for start in range(0, len(pairs), BATCH):
            await self._sign_and_keep(pairs[start : start + BATCH], read_in)
        return len(pairs)

    async def catch_up(self) -> int:
        """Re-sign cached serials the store says are revoked though no event said so.

        Revocations made by another process (another replica) reach this one
        here, on the service's schedule, instead of at the next refresh.
        """
        revoked = await self.tenant.store.list_revoked_certificates(None)
        missed = [int(record.serial, 16) for record in revoked]
        missed = [s for s in missed if s not in self._known_revoked and self.cache.keys_of(s)]
        for serial in missed:
            self._generation += 1
            self._revoked_in[serial] = self._generation
            await self._resign(serial)
        return len(missed)

    async def _records(self, serials: Iterable[int]) -> dict[int, CertificateRecord]:
        wanted = set(serials)
        found: dict[int, CertificateRecord] = {}
        if len(wanted) <= POINT_READS:
            for serial in wanted:
                record = await self._lookup(serial)
                if record is not None:
                    found[serial] = record
            return found
        after = ""
        while records := await self.tenant.store.list_certificates(after, BATCH * 4):
            after = records[-1].serial
            for record in records:
                serial = int(record.serial, 16)
                if serial in wanted:
                    found[serial] = record
        return found

    # Certificate events (acme_mt.events): quick, never raising.

    def issued(self, serial_hex: str) -> None:
        serial = int(serial_hex, 16)
        if not self._presign_due:
            self._spawn(self._presign_gathered())
        key = self.presign_request(serial).cache_key
        waiting = None
        if key not in self._inflight:
            # A request for the serial meanwhile waits for the batch rather than sign again.
            waiting = asyncio.get_running_loop().create_future()
            self._inflight[key] = waiting
        self._presign_due.append((serial, waiting))

    async def _presign_gathered(self) -> None:
        """Pre-sign what was issued over ``PRESIGN_GATHER``: one signing call, one write."""
        due: list[tuple[int, asyncio.Future[CachedResponse | None] | None]] = []
        try:
            await asyncio.sleep(PRESIGN_GATHER)
            due, self._presign_due = self._presign_due, []
            read_in = self._generation
            records = await self._records(serial for serial, _ in due)
            pairs = [
                (self.presign_request(serial), record)
                for serial, record in records.items()
                if record.status in _ISSUED
            ]
            if pairs:
                await self._sign_and_keep(pairs, read_in)
        finally:
            if not due:  # stopped while gathering
                due, self._presign_due = self._presign_due, []
            # Waiters get what the batch signed, or None (and sign) if it failed.
            for serial, waiting in due:
                if waiting is None:
                    continue
                key = self.presign_request(serial).cache_key
                if self._inflight.get(key) is waiting:
                    del self._inflight[key]
                waiting.set_result(self.cache.get(key))

    def revoked(self, serial_hex: str) -> None:
        serial = int(serial_hex, 16)
        self._generation += 1
        self._revoked_in[serial] = self._generation
        self._spawn(self._resign(serial))

    async def _resign(self, serial: int) -> None:
        read_in = self._generation
        record = await self._lookup(serial)
        keys = self.cache.keys_of(serial) | {self.presign_request(serial).cache_key}
        if record is None:
            self.cache.drop_all(keys)
            return
        pairs = [(_request_for(key, self._hashes), record) for key in keys]
        await self._sign_and_keep(pairs, read_in)
        logger.info("re-signed OCSP for revoked serial %x", serial)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("OCSP pre-signing for tenant %s failed", self.tenant.slug)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _request_for(key: CacheKey, hashes: dict[str, tuple[bytes, bytes]]) -> CertRequest:
    """The CertID a cache key stands for (the key holds the hash name and serial)."""
    hash_name, serial, cert_id_der = key
    name_hash, key_hash = hashes[hash_name]
    return CertRequest(hash_name, name_hash, key_hash, serial, cert_id_der)


def _record(response: CachedResponse, revoked: bool) -> OcspResponseRecord:
    return OcspResponseRecord(
        serial=format(response.serial, "x"),
        der=response.der,
        this_update=response.this_update,
        next_update=response.next_update,
        not_after=response.not_after,
        revoked=revoked,
    )
