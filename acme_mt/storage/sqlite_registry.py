"""The provider's registry of tenants and provider-level values, in one SQLite file.

Implements ``RegistryStore`` from ``acme_mt.storage.base``. The command line
writes the same file while the server runs (``acme-mt tenant create``), so
every call reads fresh rows rather than a cached list.
"""

from __future__ import annotations

import sqlite3

from acme_mt.errors import StoreError
from acme_mt.storage.base import TenantRecord
from acme_mt.storage.sqlite_db import SqliteDatabase
from acme_mt.storage.sqlite_rows import insert, tenant_from_row, tenant_to_row

Conn = sqlite3.Connection


class SqliteRegistryStore:
    """Every tenant of this installation, by slug; only provider-level code holds it."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def list_tenants(self) -> list[TenantRecord]:
        """All tenants, oldest first."""

        def body(conn: Conn) -> list[TenantRecord]:
            rows = conn.execute("SELECT * FROM tenants ORDER BY created, slug").fetchall()
            return [tenant_from_row(row) for row in rows]

        return await self._db.read(body)

    async def get_tenant(self, slug: str) -> TenantRecord | None:
        def body(conn: Conn) -> TenantRecord | None:
            rows = conn.execute("SELECT * FROM tenants WHERE slug = ?", (slug,)).fetchall()
            return tenant_from_row(rows[0]) if rows else None

        return await self._db.read(body)

    async def create_tenant(self, tenant: TenantRecord) -> None:
        """Register a tenant.

        :raises acme_mt.errors.Conflict: the slug (or the id) is taken.
        """
        await self._db.write(lambda conn: insert(conn, "tenants", tenant_to_row(tenant)))

    async def update_tenant(self, tenant: TenantRecord) -> None:
        """Store a new version of a tenant, found by id.

        :raises acme_mt.errors.Conflict: the new slug belongs to another tenant.
        :raises acme_mt.errors.StoreError: no tenant has this id.
        """

        def body(conn: Conn) -> None:
            cursor = conn.execute(
                "UPDATE tenants SET slug = :slug, status = :status, policy = :policy,"
                " ca_certificate_pem = :ca_certificate_pem, ca_key_label = :ca_key_label,"
                " model = :model, tier = :tier WHERE id = :id",
                tenant_to_row(tenant),
            )
            if cursor.rowcount == 0:
                raise StoreError("no such tenant")

        await self._db.write(body)

    async def get_value(self, name: str) -> str | None:
        def body(conn: Conn) -> str | None:
            rows = conn.execute(
                "SELECT value FROM provider_values WHERE name = ?", (name,)
            ).fetchall()
            return str(rows[0]["value"]) if rows else None

        return await self._db.read(body)

    async def set_value(self, name: str, value: str) -> None:
        """Set a provider-level value, replacing any earlier one."""

        def body(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO provider_values (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await self._db.write(body)

    async def close(self) -> None:
        await self._db.close()
