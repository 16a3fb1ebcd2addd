"""The embedded store back end: one SQLite file per tenant plus one for the registry.

Layout under the data directory::

    registry.sqlite3                  tenants and provider-level values
    tenants/<slug>/store.sqlite3      one tenant's ACME state and audit chain

Tenant directories are private to the server's user (0700) because the files
hold EAB keys. Each open file has its own connection on its own worker thread
(``acme_mt.storage.sqlite_db``), so one tenant's slow or broken file never
holds up another's calls.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from pathlib import Path

from acme_mt.errors import Conflict, StoreError
from acme_mt.storage.sqlite_db import SqliteDatabase
from acme_mt.storage.sqlite_registry import SqliteRegistryStore
from acme_mt.storage.sqlite_tenant import SqliteTenantStore

logger = logging.getLogger(__name__)

REGISTRY_FILE = "registry.sqlite3"
TENANT_FILE = "store.sqlite3"

#: The slug rule of the URLs; it also keeps a slug from naming a path outside the data directory.
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class SqliteBackend:
    """The ``StoreBackend`` for ``acme-mt serve`` with no configuration.

    Limitation: every open tenant store keeps a connection and a thread, so an
    installation with thousands of tenants keeps thousands of threads; closing
    idle tenant stores (or moving to PostgreSQL) ends that.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._open: weakref.WeakSet[SqliteDatabase] = weakref.WeakSet()

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
        return SqliteTenantStore(tenant_id, slug, db)

    async def open_tenant_store(self, tenant_id: str, slug: str) -> SqliteTenantStore:
        """Open an existing tenant's file, applying any pending migrations.

        :raises acme_mt.errors.StoreError: the tenant has no store here.
        """
        path = self._tenant_path(slug)
        if not await asyncio.to_thread(path.is_file):
            raise StoreError("the tenant has no store")
        db = await self._open_db(path, "tenant")
        return SqliteTenantStore(tenant_id, slug, db)

    async def close(self) -> None:
        """Close every registry and tenant store this back end opened and still holds."""
        for db in list(self._open):
            await db.close()

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
