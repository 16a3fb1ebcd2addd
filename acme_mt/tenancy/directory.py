"""Tenant resolution: from a URL slug to a live ``TenantContext``.

Contexts are built on first use and kept; a tenant created by another process
(the CLI, another replica) is found on the next request that names it, and a
suspended or offboarded one disappears within one refresh. Unknown slugs are
remembered briefly so that guessing names cannot hammer the registry.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from cryptography import x509

from acme_mt.config import Settings
from acme_mt.errors import AcmeMtError, TenantUnavailable
from acme_mt.issuance import Issuer
from acme_mt.keystores.base import KeyStore
from acme_mt.storage.base import RegistryStore, StoreBackend, TenantRecord
from acme_mt.tenancy.context import SLUG_PATTERN, TenantContext
from acme_mt.tenancy.nonces import InMemoryNonces, NonceService
from acme_mt.tenancy.policy import TenantPolicy

logger = logging.getLogger(__name__)

_SLUG_RE = re.compile(SLUG_PATTERN)
NEGATIVE_TTL_SECONDS = 2.0
REFRESH_SECONDS = 2.0


class TenantDirectory:
    """The serving process's view of the registry, with one context per live tenant."""

    def __init__(
        self,
        settings: Settings,
        registry: RegistryStore,
        stores: StoreBackend,
        keystore: KeyStore,
        root_certificate: x509.Certificate,
        nonce_factory: Callable[[str], NonceService] | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._stores = stores
        self._keystore = keystore
        self._root = root_certificate
        self._nonce_factory = nonce_factory or (lambda _tenant_id: InMemoryNonces())
        self._contexts: dict[str, TenantContext] = {}
        self._misses: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[str, float] = {}

    def built(self, slug: str) -> TenantContext | None:
        """The tenant's context if it is already built, without touching the registry.

        For hot paths that would otherwise pay a coroutine to learn what a dict
        holds; on None, call :meth:`resolve`.
        """
        return self._contexts.get(slug)

    async def resolve(self, slug: str) -> TenantContext | None:
        """The active tenant named ``slug``, or None for unknown and hidden alike.

        :raises TenantUnavailable: the tenant exists but its store or keys fail.
        """
        context = self._contexts.get(slug)
        if context is not None:
            return context
        if not _SLUG_RE.fullmatch(slug):
            return None
        missed = self._misses.get(slug)
        if missed is not None and time.monotonic() - missed < NEGATIVE_TTL_SECONDS:
            return None
        lock = self._locks.setdefault(slug, asyncio.Lock())
        async with lock:
            context = self._contexts.get(slug)
            if context is not None:
                return context
            record = await self._registry.get_tenant(slug)
            if record is None or record.status != "active":
                self._remember_miss(slug)
                return None
            context = await self._build(record)
            self._contexts[slug] = context
            self._misses.pop(slug, None)
            return context

    def _remember_miss(self, slug: str) -> None:
        if len(self._misses) > 10_000:
            self._misses.clear()
        self._misses[slug] = time.monotonic()

    async def _build(self, record: TenantRecord) -> TenantContext:
        try:
            policy = TenantPolicy.from_dict(
                record.policy, default_require_eab=record.slug != "default"
            )
            store = await self._stores.open_tenant_store(record.id, record.slug)
            partition = await self._keystore.open_partition(record.id)
            ca_key = await partition.get(record.ca_key_label)
        except AcmeMtError as exc:
            logger.error("tenant %s cannot be opened: %s", record.slug, exc)
            raise TenantUnavailable() from None
        ca_certificate = x509.load_pem_x509_certificate(record.ca_certificate_pem.encode())
        issuer = Issuer(
            slug=record.slug,
            certificate=ca_certificate,
            key=ca_key,
            root=self._root,
            http_url=self._settings.server.http_url,
        )
        # Limitation: recovery runs when a process first opens the tenant, which is right
        # for one server; replicas sharing a store would need it to skip serials younger
        # than a signing deadline, so one replica never abandons another's issuance.
        recovered = await store.recover_interrupted_issuance()
        if recovered:
            logger.warning(
                "tenant %s: %d interrupted issuances made ready again", record.slug, recovered
            )
        return TenantContext(
            id=record.id,
            slug=record.slug,
            status=record.status,
            policy=policy,
            store=store,
            keys=partition,
            issuer=issuer,
            nonces=self._nonce_factory(record.id),
        )

    async def refresh(self) -> None:
        """Drop contexts of tenants no longer active and pick up policy changes."""
        records = {r.slug: r for r in await self._registry.list_tenants()}
        for slug, context in list(self._contexts.items()):
            record = records.get(slug)
            if record is None or record.status != "active" or record.id != context.id:
                logger.info("tenant %s is no longer served", slug)
                del self._contexts[slug]
                await context.store.close()
                continue
            policy = TenantPolicy.from_dict(record.policy, default_require_eab=slug != "default")
            if policy != context.policy:
                self._contexts[slug] = TenantContext(
                    id=context.id,
                    slug=slug,
                    status=record.status,
                    policy=policy,
                    store=context.store,
                    keys=context.keys,
                    issuer=context.issuer,
                    nonces=context.nonces,
                    validation_slots=context.validation_slots,
                )
        self._misses.clear()

    async def run_refresh(self) -> None:
        """Refresh forever; meant to run as a background task of the app."""
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except Exception:
                logger.exception("registry refresh failed")

    def loaded(self) -> list[TenantContext]:
        return list(self._contexts.values())

    async def close(self) -> None:
        for context in self._contexts.values():
            await context.store.close()
        self._contexts.clear()
