"""Every tenant's OCSP responder in this process, and the schedule that keeps them fresh.

At start every active tenant with OCSP on gets a responder, which loads (or
issues) its delegated signer and pre-signs a response for each unexpired
certificate; tenants created later get theirs on their first request or
issuance. Certificate events (``acme_mt.events``) reach the tenant's responder
at once. Every ``SYNC_SECONDS`` each responder takes the responses other
processes kept in the tenant's store. Every ``REFRESH_SECONDS`` the process that
holds the tenant's ``ocsp-refresh`` lease in the store (one replica among
several; always this one on the embedded defaults) renews the signer when due,
re-signs the serials another process revoked and what passed half its window;
and responders of tenants that are no longer served, or that turned OCSP off,
are let go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime, timedelta
from typing import Any

from acme_mt.errors import AcmeMtError
from acme_mt.models import utcnow
from acme_mt.storage.base import RegistryStore
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.directory import TenantDirectory
from acme_mt.tenancy.policy import TenantPolicy
from ocsp.responder import TenantResponder
from ocsp.signers import new_holder

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
SYNC_SECONDS = 5.0
#: The refresh lease outlives a missed pass or two, then another replica takes over.
REFRESH_LEASE = timedelta(seconds=3 * REFRESH_SECONDS)
REFRESH_JOB = "ocsp-refresh"


class OcspService:
    """Finds or starts each tenant's responder, and keeps every one signed and current."""

    def __init__(
        self,
        tenants: TenantDirectory,
        registry: RegistryStore,
        executor: Executor | None = None,
        clock: Callable[[], datetime] = utcnow,
        *,
        log_requests: bool = False,
    ) -> None:
        self.tenants = tenants
        #: Log every request's event, not only HTTP-level failures.
        self.log_requests = log_requests
        self._registry = registry
        self._executor = executor
        self._clock = clock
        self._responders: dict[str, TenantResponder] = {}
        self._warming: dict[str, asyncio.Task[None]] = {}
        #: This process, as it names itself when it holds a lease.
        self.holder = new_holder()

    def responder(self, tenant: TenantContext, *, leave_fresh: bool = True) -> TenantResponder:
        """The tenant's responder, started (signer, pre-signing) on first use.

        Started while the server runs, it leaves certificates issued moments
        ago to the process that issued them (``TenantResponder.warm``); at
        start (``leave_fresh`` false) it signs whatever is missing.
        """
        responder = self._responders.get(tenant.id)
        if responder is None:
            responder = TenantResponder(tenant, self._executor, self._clock)
            self._responders[tenant.id] = responder
            self._start_warming(responder, leave_fresh=leave_fresh)
        return responder

    def _start_warming(self, responder: TenantResponder, *, leave_fresh: bool = True) -> None:
        tenant_id = responder.tenant.id
        if tenant_id in self._warming:
            return
        task = asyncio.get_running_loop().create_task(self._warm(responder, leave_fresh))
        self._warming[tenant_id] = task
        task.add_done_callback(lambda _task: self._warming.pop(tenant_id, None))

    async def _warm(self, responder: TenantResponder, leave_fresh: bool) -> None:
        slug = responder.tenant.slug
        try:
            await responder.signers.current(self._clock())
            signed = await responder.warm(leave_fresh=leave_fresh)
        except Exception:
            logger.exception("OCSP for tenant %s could not start", slug)
            return
        logger.info("tenant %s: %d OCSP responses pre-signed", slug, signed)

    async def start(self) -> None:
        """Start the responder of every active tenant that has OCSP on, one after another."""
        try:
            records = await self._registry.list_tenants()
        except Exception:
            logger.exception("OCSP cannot list tenants")
            return
        for record in records:
            if record.status != "active" or not _ocsp_on(record.policy, record.slug):
                continue
            try:
                tenant = await self.tenants.resolve(record.slug)
            except Exception:
                logger.exception("tenant %s is unavailable for OCSP", record.slug)
                continue
            if tenant is not None:
                self.responder(tenant, leave_fresh=False)
                await asyncio.gather(*self._warming.values(), return_exceptions=True)

    # Certificate events: quick, never raising.

    def issued(self, tenant_id: str, serial_hex: str) -> None:
        responder = self._responders.get(tenant_id)
        if responder is not None:
            responder.issued(serial_hex)
            return
        tenant = next((t for t in self.tenants.loaded() if t.id == tenant_id), None)
        if tenant is not None and tenant.policy.ocsp:
            # Its pre-signing pass leaves a fresh serial to the batch that issued it.
            self.responder(tenant).issued(serial_hex)

    def revoked(self, tenant_id: str, serial_hex: str) -> None:
        responder = self._responders.get(tenant_id)
        if responder is not None:
            responder.revoked(serial_hex)

    # The schedule.

    async def run_schedule(self) -> None:
        """Keep every responder fresh, forever; meant to run as a task of the app."""
        loop = asyncio.get_running_loop()
        refreshed = loop.time()
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            if loop.time() - refreshed >= REFRESH_SECONDS:
                refreshed = loop.time()
                await self.tick()
            else:
                await self.sync()

    async def sync(self) -> None:
        """Take into every warm responder what other processes kept in the store."""
        for responder in list(self._responders.values()):
            if not responder.warmed:
                continue
            try:
                await responder.pull()
            except Exception:
                logger.exception("OCSP pull of tenant %s failed", responder.tenant.slug)

    async def tick(self) -> None:
        """One pass: let go of tenants no longer served, take what others kept, and,
        holding the tenant's refresh lease, renew signers and re-sign what is due."""
        served = {t.id: t for t in self.tenants.loaded()}
        for tenant_id, responder in list(self._responders.items()):
            tenant = served.get(tenant_id)
            if tenant is None or not tenant.policy.ocsp:
                del self._responders[tenant_id]
                await responder.close()
                continue
            if not responder.warmed:
                self._start_warming(responder)
                continue
            try:
                await responder.pull()
                now = self._clock()
                store = responder.tenant.store
                if not await store.claim_job(REFRESH_JOB, self.holder, now, now + REFRESH_LEASE):
                    continue
                await responder.signers.current(now)
                await responder.catch_up()
                await responder.refresh()
            except Exception:
                logger.exception("OCSP refresh of tenant %s failed", responder.tenant.slug)

    async def close(self) -> None:
        for task in list(self._warming.values()):
            task.cancel()
        await asyncio.gather(*self._warming.values(), return_exceptions=True)
        for responder in self._responders.values():
            await responder.close()
        self._responders.clear()


def _ocsp_on(policy: dict[str, Any], slug: str) -> bool:
    try:
        return TenantPolicy.from_dict(policy, default_require_eab=slug != "default").ocsp
    except AcmeMtError:
        return False
