"""Keeping each tenant's CRLs signed and in memory (RFC 5280 §5, §5.2.4-6).

A tenant's CRLs are first signed when someone first asks for them, then on a
schedule and shortly after each revocation: never per request. One worker task
per tenant does all its signing, so numbers, bases and deltas of one tenant
never interleave; tenants sign side by side in a small thread pool.

Limitation: each worker process of a server signs its own copy of a tenant's
CRLs (the revocation event reaches every worker), so the signing work is done
once per worker and two requests that land on different workers may see CRL
numbers a few seconds apart. Keeping the signed CRLs in the store under a job
lease, as pre-signed OCSP responses are kept, would end both.

A revocation event is debounced per tenant (2 s after the last, at most 10 s
after the first). The shards it touched get a new full CRL and delta, unless
the full CRL took long to sign (a million entries take tens of seconds): then
only the delta is re-signed now, and the full CRL once its cool-down ends.

A delta lists the shard's certificates revoked since its base's cut-off,
filtered in a worker thread from ``list_revoked_certificates`` rather than read
with a narrower query: deltas are signed only after revocations or every 30
minutes, the read is the indexed scan a full CRL makes anyway, and filtering a
million records costs about 0.4 s of CPU against about 18 s to sign them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Any

from acme_mt.errors import AcmeMtError
from acme_mt.issuance.crl import CrlDraft, sign_crls
from acme_mt.log import request_id_var, tenant_var
from acme_mt.models import CertificateRecord, utcnow
from acme_mt.storage.base import StoreReader
from acme_mt.tenancy.context import TenantContext
from crl.published import (
    DEBOUNCE_SECONDS,
    DELTA_LIFETIME,
    DELTA_OVERLAP,
    FIRST_BUILD_WAIT,
    FULL_COOLDOWN_FACTOR,
    MAX_DEBOUNCE_SECONDS,
    RETRY_SECONDS,
    SHARD_LOOKUP_LIMIT,
    CrlNumbers,
    CrlUnavailable,
    PublishedCrl,
    ShardCrls,
    TenantCrls,
    TenantResolver,
    delta_crl_url,
    full_refresh,
)

logger = logging.getLogger(__name__)


#: Per shard: its revoked certificates, and those revoked since its cut-off.
Split = dict[int, tuple[list[CertificateRecord], list[CertificateRecord]]]


class TenantCrlPublisher:
    """Signs every served tenant's CRL shards and deltas, and keeps them for requests."""

    def __init__(
        self,
        tenants: TenantResolver,
        *,
        executor: Executor | None = None,
        numbers: CrlNumbers | None = None,
        debounce: float = DEBOUNCE_SECONDS,
        max_debounce: float = MAX_DEBOUNCE_SECONDS,
        cooldown_factor: float = FULL_COOLDOWN_FACTOR,
    ) -> None:
        self._tenants = tenants
        self._executor = executor
        self._numbers = numbers or CrlNumbers()
        self._debounce = debounce
        self._max_debounce = max_debounce
        self._cooldown_factor = cooldown_factor
        self._states: dict[str, TenantCrls] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Stop timers and workers; CRLs being signed in threads are abandoned."""
        self._loop = None
        for state in self._states.values():
            state.cancel_timer()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._states.clear()

    # Requests.

    async def current(self, tenant: TenantContext, shard: int, delta: bool) -> PublishedCrl:
        """The shard's full CRL or delta, waiting for the tenant's first signing if needed.

        :raises CrlUnavailable: not signed within the wait, or signing failed.
        """
        state = self._states.get(tenant.id)
        if state is None:
            state = self._states[tenant.id] = TenantCrls(tenant.id, tenant.slug)
        published = state.shards.get(shard)
        if published is None:
            await self._wait_for_first(state)
            published = state.shards.get(shard)
            if published is None:
                raise CrlUnavailable()
        return published.delta if delta else published.full

    async def _wait_for_first(self, state: TenantCrls) -> None:
        failed_at = None if state.busy else state.failed_at
        if failed_at is not None and self._now() - failed_at < RETRY_SECONDS:
            raise CrlUnavailable()
        worker = self._request(state, (), ())
        try:
            await asyncio.wait_for(asyncio.shield(worker), FIRST_BUILD_WAIT)
        except TimeoutError:
            raise CrlUnavailable() from None

    # Revocations.

    def revoked(self, tenant_id: str, serial: str) -> None:
        """Listener for ``Events.on_revoked``: quick and never raises."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._note_revocation, tenant_id, serial)

    def _note_revocation(self, tenant_id: str, serial: str) -> None:
        state = self._states.get(tenant_id)
        if state is None or self._loop is None:
            return  # never published here: its first signing reads the store
        now = self._now()
        state.pending.add(serial)
        if state.first_pending is None:
            state.first_pending = now
        delay = max(0.0, min(self._debounce, state.first_pending + self._max_debounce - now))
        state.cancel_timer()
        state.timer = self._loop.call_later(delay, self._flush_revocations, state)

    def _flush_revocations(self, state: TenantCrls) -> None:
        serials, state.pending = state.pending, set()
        state.first_pending = None
        state.timer = None
        self._spawn(self._after_revocations(state, serials))

    async def _after_revocations(self, state: TenantCrls, serials: set[str]) -> None:
        tenant_var.set(state.slug)
        tenant = await self._resolve(state)
        if tenant is None:
            return
        try:
            shards = await self._shards_of(tenant, serials)
        except Exception:
            logger.exception("could not look up revoked serials; re-signing every shard")
            shards = set(range(tenant.policy.crl_shards))
        now = self._now()
        full: set[int] = set()
        delta: set[int] = set()
        for number in shards:
            published = state.shards.get(number)
            if published is None or published.cooled_down(now, self._cooldown_factor):
                full.add(number)
            else:
                published.stale = True
                delta.add(number)
        self._request(state, full, delta)
        if delta and self._loop is not None:
            ready = max(state.shards[n].cooldown_end(self._cooldown_factor) for n in delta)
            self._loop.call_later(max(0.0, ready - now), self._resign_stale, state)

    def _resign_stale(self, state: TenantCrls) -> None:
        """Re-sign the full CRLs whose revocations waited for their cool-down."""
        if self._loop is None or self._states.get(state.id) is not state:
            return
        now = self._now()
        due = {
            number
            for number, published in state.shards.items()
            if published.stale and published.cooled_down(now, self._cooldown_factor)
        }
        if due:
            self._request(state, due, ())

    @staticmethod
    async def _shards_of(tenant: TenantContext, serials: set[str]) -> set[int]:
        count = tenant.policy.crl_shards
        if len(serials) > SHARD_LOOKUP_LIMIT:
            return set(range(count))
        shards = set()
        for serial in serials:
            record = await tenant.store.get_certificate(serial)
            if record is not None and record.shard < count:
                shards.add(record.shard)
        return shards

    # The schedule.

    async def tick(self) -> None:
        """Re-sign what is due, follow policy changes, forget tenants no longer served."""
        wall, now = utcnow(), self._now()
        for state in list(self._states.values()):
            if state.busy:
                continue
            if state.failed_at is not None and now - state.failed_at < RETRY_SECONDS:
                continue
            tenant = await self._resolve(state)
            if tenant is None:
                continue
            lifetime = timedelta(hours=tenant.policy.crl_lifetime_hours)
            full: set[int] = set()
            delta: set[int] = set()
            for number, published in state.shards.items():
                relifed = published.full.next_update - published.full.this_update != lifetime
                if (
                    relifed
                    or wall >= published.full_due
                    or (published.stale and published.cooled_down(now, self._cooldown_factor))
                ):
                    full.add(number)
                elif wall >= published.delta_due:
                    delta.add(number)
            reshaped = set(state.shards) != set(range(tenant.policy.crl_shards))
            if full or delta or reshaped:
                self._request(state, full, delta)

    # The worker.

    def _request(
        self, state: TenantCrls, full: Iterable[int], delta: Iterable[int]
    ) -> asyncio.Task[None]:
        """Ask the tenant's worker to sign; a running worker picks the request up next."""
        state.want_full.update(full)
        state.want_delta.update(delta)
        if state.worker is None or state.worker.done():
            state.worker = self._spawn(self._work(state))
        return state.worker

    async def _work(self, state: TenantCrls) -> None:
        tenant_var.set(state.slug)
        request_id_var.set("crl")
        while True:
            full, state.want_full = state.want_full, set()
            delta, state.want_delta = state.want_delta, set()
            tenant = await self._resolve(state)
            if tenant is None:
                return
            try:
                await self._sign(tenant, state, full, delta)
            except Exception:
                logger.exception("signing CRLs failed")
                state.failed_at = self._now()
                return
            state.failed_at = None
            if not state.want_full and not state.want_delta:
                return

    async def _sign(
        self, tenant: TenantContext, state: TenantCrls, full: set[int], delta: set[int]
    ) -> None:
        count = tenant.policy.crl_shards
        # Limitation: lowering crl_shards stops publishing the higher shards while
        # certificates pointing at them are unexpired; a policy check refusing to
        # lower it until they expire would end that.
        for number in [n for n in state.shards if n >= count]:
            del state.shards[number]
        full = {n for n in full if n < count} | (set(range(count)) - set(state.shards))
        delta = {n for n in delta if n < count} - full
        if full:
            await self._sign_full(tenant, state, sorted(full))
        if delta:
            await self._sign_deltas(tenant, state, sorted(delta))

    async def _sign_full(self, tenant: TenantContext, state: TenantCrls, shards: list[int]) -> None:
        """New full CRLs for ``shards``, each with a delta of the same number (§5.2.4)."""
        started = self._now()
        now = utcnow()
        lifetime = timedelta(hours=tenant.policy.crl_lifetime_hours)
        cutoff = now - DELTA_OVERLAP
        revoked = await self._revoked(tenant.store, dict.fromkeys(shards, cutoff))
        number = self._numbers.next()
        issuer = tenant.issuer
        drafts: list[CrlDraft] = []
        for shard in shards:
            scope = issuer.crl_url(shard)
            entries, recent = revoked[shard]
            full_crl = CrlDraft(
                issuer=issuer.certificate,
                number=number,
                this_update=now,
                next_update=now + lifetime,
                entries=entries,
                scope_url=scope,
                delta_url=delta_crl_url(issuer, shard),
            )
            delta_crl = CrlDraft(
                issuer=issuer.certificate,
                number=number,
                this_update=now,
                next_update=now + DELTA_LIFETIME,
                entries=recent,
                scope_url=scope,
                base_number=number,
            )
            drafts += [full_crl, delta_crl]
        signed = await sign_crls(drafts, issuer.key, audit=tenant.store, executor=self._executor)

        finished = self._now()
        per_shard = (finished - started) / len(shards)
        for index, shard in enumerate(shards):
            full_draft, delta_draft = drafts[2 * index], drafts[2 * index + 1]
            state.shards[shard] = ShardCrls(
                full=PublishedCrl.from_signed(full_draft, signed[2 * index]),
                delta=PublishedCrl.from_signed(delta_draft, signed[2 * index + 1]),
                cutoff=cutoff,
                full_due=now + full_refresh(lifetime),
                delta_due=now + DELTA_LIFETIME / 2,
                built_at=finished,
                build_seconds=per_shard,
            )
        logger.info("published full CRL number %d for shard(s) %s", number, shards)

    async def _sign_deltas(
        self, tenant: TenantContext, state: TenantCrls, shards: list[int]
    ) -> None:
        """New deltas for ``shards`` against the full CRLs they already have."""
        now = utcnow()
        cutoffs = {shard: state.shards[shard].cutoff for shard in shards}
        revoked = await self._revoked(tenant.store, cutoffs)
        number = self._numbers.next()
        issuer = tenant.issuer
        drafts = []
        for shard in shards:
            base = state.shards[shard]
            recent = revoked[shard][1]
            draft = CrlDraft(
                issuer=issuer.certificate,
                number=number,
                this_update=now,
                next_update=now + DELTA_LIFETIME,
                entries=recent,
                scope_url=issuer.crl_url(shard),
                base_number=base.full.number,
            )
            drafts.append(draft)
        signed = await sign_crls(drafts, issuer.key, audit=tenant.store, executor=self._executor)
        for shard, draft, crl in zip(shards, drafts, signed, strict=True):
            base = state.shards[shard]
            base.delta = PublishedCrl.from_signed(draft, crl)
            base.delta_due = now + DELTA_LIFETIME / 2
        logger.info("published delta CRL number %d for shard(s) %s", number, shards)

    # Helpers.

    async def _revoked(self, store: StoreReader, cutoffs: dict[int, datetime]) -> Split:
        """Each shard's revoked certificates, and those revoked since its cut-off."""
        shards = list(cutoffs)
        records = await store.list_revoked_certificates(shards[0] if len(shards) == 1 else None)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _split, records, cutoffs)

    async def _resolve(self, state: TenantCrls) -> TenantContext | None:
        """The tenant's live context; a tenant no longer served is forgotten."""
        try:
            tenant = await self._tenants.resolve(state.slug)
        except AcmeMtError:
            return None  # unavailable for now; keep what was published
        if tenant is None or tenant.id != state.id:
            state.cancel_timer()
            if self._states.get(state.id) is state:
                del self._states[state.id]
            return None
        return tenant

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _now(self) -> float:
        return asyncio.get_running_loop().time()


def _split(records: list[CertificateRecord], cutoffs: dict[int, datetime]) -> Split:
    """Group records by shard and pick the recent ones; runs in a worker thread."""
    split: Split = {shard: ([], []) for shard in cutoffs}
    for record in records:
        lists = split.get(record.shard)
        if lists is None:
            continue
        lists[0].append(record)
        if record.revoked_at is None or record.revoked_at >= cutoffs[record.shard]:
            lists[1].append(record)
    return split
