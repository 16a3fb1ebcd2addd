"""The embedded store back end: one SQLite file per tenant plus one for the registry.

``SqliteBackend`` opens the stores; ``SqliteRegistryStore`` is the provider's
list of tenants. The command line writes the registry while the server runs
(``acme-mt tenant create``), so every call reads fresh rows, never a cache.

Layout under the data directory::

    registry.sqlite3                  tenants and provider-level values
    tenants/<slug>/store.sqlite3      one tenant's ACME state and audit chain

Tenant directories are private to the server's user (0700) because the files
hold EAB keys. Each open file has its own connections and its own thread for
the work that may wait (``acme_mt.storage.sqlite_db``): a write to a file that
another process has locked yields to the loop, and syncs happen on the file's
thread, so one tenant's locked or slow file does not hold up another's calls.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import weakref
from pathlib import Path

from acme_mt.errors import Conflict, StoreError
from acme_mt.storage.base import TENANT_ID, TenantRecord
from acme_mt.storage.sqlite_db import SqliteDatabase
from acme_mt.storage.sqlite_liveness import FileLiveness
from acme_mt.storage.sqlite_nonces import SqliteSpentNonces
from acme_mt.storage.sqlite_rows import insert, tenant_from_row, tenant_to_row
from acme_mt.storage.sqlite_tenant import SqliteTenantStore

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.sqlite3"
TENANT_FILE = "store.sqlite3"

#: The slug rule of the URLs; it also keeps a slug from naming a path outside the data directory.
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")

Conn = sqlite3.Connection


# Limitation: every open tenant store keeps a connection and a thread, so an
# installation with thousands of tenants keeps thousands of threads; closing idle
# tenant stores (or moving such an installation to PostgreSQL) ends that.
class SqliteBackend:
    """The ``StoreBackend`` for ``acme-mt serve`` with no configuration."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._open: weakref.WeakSet[SqliteDatabase] = weakref.WeakSet()
        self._spent: dict[str, SqliteSpentNonces] = {}
        self._liveness = FileLiveness(self.data_dir / "instances")

    async def open_registry(self) -> SqliteRegistryStore:
        """Open the registry, creating the data directory and file on first use."""
        await asyncio.to_thread(self.data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        db = await self._open_db(self.data_dir / REGISTRY_FILE, "registry")
        return SqliteRegistryStore(db)

    async def create_tenant_store(self, tenant_id: str, slug: str) -> SqliteTenantStore:
        """Create a new tenant's file and apply the schema.

        :raises acme_mt.errors.Conflict: a store for this slug exists already
            (an offboarded tenant's file is never handed to a new tenant).
        """
        path = self._tenant_path(slug)
        await asyncio.to_thread(_make_tenant_dir, path)
        db = await self._open_db(path, "tenant")
        logger.info("created tenant store %s", slug)
        return SqliteTenantStore(tenant_id, slug, db, self._liveness)

    async def open_tenant_store(self, tenant_id: str, slug: str) -> SqliteTenantStore:
        """Open an existing tenant's file, applying any pending migrations.

        :raises acme_mt.errors.StoreError: the tenant has no store here.
        """
        path = self._tenant_path(slug)
        if not await asyncio.to_thread(path.is_file):
            raise StoreError("the tenant has no store")
        db = await self._open_db(path, "tenant")
        return SqliteTenantStore(tenant_id, slug, db, self._liveness)

    async def close(self) -> None:
        """Close every registry and tenant store this back end opened and still holds."""
        for db in list(self._open):
            await db.close()
        for spent in self._spent.values():
            spent.close()
        self._spent.clear()
        self._liveness.close()

    def spent_nonces(self, tenant_id: str) -> SqliteSpentNonces:
        """The spent set of a tenant's signed nonces, which worker processes share."""
        if not TENANT_ID.fullmatch(tenant_id):
            raise StoreError("invalid tenant id")
        spent = self._spent.get(tenant_id)
        if spent is None:
            path = self.data_dir / "nonces" / f"{tenant_id}.sqlite"
            spent = self._spent[tenant_id] = SqliteSpentNonces(path)
        return spent

    def _tenant_path(self, slug: str) -> Path:
        if not _SLUG.match(slug):
            raise StoreError("invalid tenant slug")
        return self.data_dir / "tenants" / slug / TENANT_FILE

    async def _open_db(self, path: Path, kind: str) -> SqliteDatabase:
        db = await SqliteDatabase.open(path, kind)
        self._open.add(db)
        return db


def _make_tenant_dir(path: Path) -> None:
    """Make the tenant's private directory; refuse when its file exists already."""
    path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.parent.chmod(0o700)
    if path.exists():
        raise Conflict("a store for this tenant exists already")


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
