"""The provider's registry in PostgreSQL: every tenant and provider-level values.

Rows live in the ``acme_mt`` schema on the shared cluster, outside every tenant
schema and without row-level security: only provider-level code holds this
store. The command line writes it while servers run, so every call reads fresh
rows, never a cache.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from acme_mt.errors import StoreError
from acme_mt.storage.base import TenantRecord
from acme_mt.storage.postgres_db import DEAD_CONNECTION, translated_errors
from acme_mt.storage.postgres_pool import Connections
from acme_mt.storage.postgres_rows import TENANT_COLUMNS, tenant_from_row, tenant_values

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PostgresRegistryStore:
    """Every tenant of this installation, by slug; only provider-level code holds it."""

    def __init__(self, pool: Connections) -> None:
        self._pool = pool

    async def _read(self, body: Callable[[Connections], Awaitable[T]]) -> T:
        """Run a read, once more if a pooled connection turns out dead (the server restarted)."""
        with translated_errors("registry"):
            try:
                return await body(self._pool)
            except DEAD_CONNECTION:
                return await body(self._pool)

    async def list_tenants(self) -> list[TenantRecord]:
        """All tenants, oldest first."""
        rows = await self._read(
            lambda pool: pool.fetch(
                f"SELECT {TENANT_COLUMNS} FROM acme_mt.tenants ORDER BY created, slug"
            )
        )
        return [tenant_from_row(row) for row in rows]

    async def get_tenant(self, slug: str) -> TenantRecord | None:
        row = await self._read(
            lambda pool: pool.fetchrow(
                f"SELECT {TENANT_COLUMNS} FROM acme_mt.tenants WHERE slug = $1", slug
            )
        )
        return None if row is None else tenant_from_row(row)

    async def create_tenant(self, tenant: TenantRecord) -> None:
        """Register a tenant.

        :raises acme_mt.errors.Conflict: the slug (or the id) is taken.
        """
        with translated_errors("registry"):
            await self._pool.execute(
                f"INSERT INTO acme_mt.tenants ({TENANT_COLUMNS})"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                *tenant_values(tenant),
            )

    async def update_tenant(self, tenant: TenantRecord) -> None:
        """Store a new version of a tenant, found by id.

        :raises acme_mt.errors.Conflict: the new slug belongs to another tenant.
        :raises acme_mt.errors.StoreError: no tenant has this id.
        """
        tenant_id, slug, status, policy, pem, label, _created, model, tier = tenant_values(tenant)
        with translated_errors("registry"):
            result = await self._pool.execute(
                "UPDATE acme_mt.tenants SET slug = $2, status = $3, policy = $4,"
                " ca_certificate_pem = $5, ca_key_label = $6, model = $7, tier = $8"
                " WHERE id = $1",
                tenant_id,
                slug,
                status,
                policy,
                pem,
                label,
                model,
                tier,
            )
        if result.rsplit(" ", 1)[-1] == "0":
            raise StoreError("no such tenant")

    async def get_value(self, name: str) -> str | None:
        value = await self._read(
            lambda pool: pool.fetchval(
                "SELECT value FROM acme_mt.provider_values WHERE name = $1", name
            )
        )
        return None if value is None else str(value)

    async def set_value(self, name: str, value: str) -> None:
        """Set a provider-level value, replacing any earlier one."""
        with translated_errors("registry"):
            await self._pool.execute(
                "INSERT INTO acme_mt.provider_values (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                name,
                value,
            )

    async def close(self) -> None:
        """Nothing to close: the pool belongs to the back end."""
