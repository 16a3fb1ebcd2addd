"""The production store back end: PostgreSQL through asyncpg, a schema per tenant.

``PostgresBackend`` opens ``[store] pool_max`` connections on the shared
cluster as the application role, in small pools of two
(``acme_mt.storage.postgres_pool``); tenant stores are thin objects bound to a
tenant id, a schema and a home pool, so a thousand tenants cost no connections
of their own. A dedicated tenant (its database named in the secrets file at
onboarding, recorded in the registry's ``tenant_stores`` catalogue) gets a
small pool of its own on its database.

Schemas are created and migrated through the owner role
(``acme_mt.storage.postgres_roles``), at onboarding and whenever a store opens
behind the code's migrations; the application role never runs DDL, is neither
superuser nor BYPASSRLS (checked at start), and sees tenant rows only through
row-level security (``acme_mt.storage.postgres_db``). Every database that holds
tenant schemas also gets the schema ``acme_mt_functions``: the store's writes
as functions (``acme_mt.storage.postgres_writes``).

Each process holds a session advisory lock on a random number of its own (its
liveness lock) while it may have serials pending signature; recovery after a
crash abandons only the serials whose process no longer holds its lock, so a
replica starting never abandons another replica's issuance in flight.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
from pathlib import Path
from typing import Any

import asyncpg

from acme_mt.config import StoreSettings
from acme_mt.errors import ConfigError, StoreError
from acme_mt.storage.postgres_db import Binding, schema_for, translated_errors
from acme_mt.storage.postgres_migrate import (
    REGISTRY_SCHEMA,
    hold_migration_lock,
    latest_version,
    migrate_schema,
)
from acme_mt.storage.postgres_nonces import PostgresNonces
from acme_mt.storage.postgres_pool import (
    ConnectionPool,
    Connections,
    close_pools,
    home_pool,
    open_pools,
)
from acme_mt.storage.postgres_registry import PostgresRegistryStore
from acme_mt.storage.postgres_roles import (
    ConnectionPlan,
    Login,
    plan_connections,
    quote_ident,
    read_secrets,
    secrets_path,
)
from acme_mt.storage.postgres_tenant import PostgresTenantStore
from acme_mt.storage.postgres_writes import FUNCTIONS_SCHEMA

logger = logging.getLogger(__name__)

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
#: The registry's provider value that holds the nonce signing key (base64url).
NONCE_KEY = "nonce_key"


class PostgresBackend:
    """The ``StoreBackend`` for ``[store] backend = "postgres"``."""

    def __init__(self, settings: StoreSettings, data_dir: Path) -> None:
        self._settings = settings
        self._data_dir = Path(data_dir)
        #: This process's liveness lock key, recorded on the serials it leaves pending.
        self.instance = secrets.randbits(62)
        self._plan: ConnectionPlan | None = None
        self._app_role = ""
        #: The shared database's pools, and provider-level queries' way to them.
        self._pools: list[ConnectionPool] = []
        self._pool: Connections | None = None
        #: Each tenant's way to the shared pools, by home pool.
        self._homes: list[Connections] = []
        self._dedicated: dict[str, Connections] = {}
        self._bindings: dict[str, Binding] = {}
        self._current: set[str] = set()
        #: Databases (None: the shared one) whose write functions are current.
        self._functions_current: set[str | None] = set()
        self._opening = asyncio.Lock()
        self._liveness: asyncpg.Connection | None = None
        self._liveness_lock = asyncio.Lock()
        self._nonce_key: bytes | None = None

    # Opening: roles, the registry's migrations, the shared pool.

    async def _ready(self) -> Connections:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    with translated_errors("opening the store"):
                        await self._open()
        assert self._pool is not None
        return self._pool

    async def _open(self) -> None:
        plan = await plan_connections(self._settings, self._data_dir)
        pools = await open_pools(plan.app, self._settings.pool_min, self._settings.pool_max)
        try:
            role = await _checked_app_role(Connections(pools))
            if plan.owner is not None:
                conn = await plan.owner.connect()
                try:
                    await migrate_schema(conn, "registry", REGISTRY_SCHEMA, role)
                    await migrate_schema(conn, "functions", FUNCTIONS_SCHEMA, role)
                finally:
                    await conn.close()
                self._functions_current.add(None)
        except BaseException:
            await close_pools(pools)
            raise
        self._homes = [Connections(pools, home) for home in range(len(pools))]
        self._plan, self._app_role, self._pools, self._pool = plan, role, pools, self._homes[0]
        logger.info("PostgreSQL store open as role %s, %d pools", role, len(pools))

    def _owner(self) -> Login:
        if self._plan is None or self._plan.owner is None:
            raise StoreError("creating or migrating schemas needs [store] admin_dsn")
        return self._plan.owner

    async def open_registry(self) -> PostgresRegistryStore:
        return PostgresRegistryStore(await self._ready())

    # Tenant stores.

    async def create_tenant_store(self, tenant_id: str, slug: str) -> PostgresTenantStore:
        """Record, create and migrate a new tenant's schema through the owner role.

        :raises acme_mt.errors.Conflict: a store for this slug or id exists already
            (an offboarded tenant's schema is never handed to a new tenant).
        """
        await self._ready()
        if not _SLUG.match(slug):
            raise StoreError("invalid tenant slug")
        schema = schema_for(tenant_id)
        owner = self._owner()
        dedicated = self._dedicated_dsn(slug)
        with translated_errors(f"onboarding {slug}"):
            conn = await owner.connect()
            try:
                await conn.execute(
                    f"INSERT INTO {REGISTRY_SCHEMA}.tenant_stores"
                    " (tenant_id, slug, schema_name, database_dsn) VALUES ($1, $2, $3, $4)",
                    tenant_id,
                    slug,
                    schema,
                    dedicated,
                )
                try:
                    await self._migrate_tenant(conn, schema, tenant_id, dedicated)
                except BaseException:
                    await conn.execute(
                        f"DELETE FROM {REGISTRY_SCHEMA}.tenant_stores WHERE tenant_id = $1",
                        tenant_id,
                    )
                    raise
            finally:
                await conn.close()
        logger.info("created tenant schema %s%s", schema, " (dedicated)" if dedicated else "")
        binding = await self._bind(tenant_id, schema, dedicated)
        self._current.add(tenant_id)
        return PostgresTenantStore(binding, slug, self)

    async def open_tenant_store(self, tenant_id: str, slug: str) -> PostgresTenantStore:
        """Open an existing tenant's store, migrating its schema first if it is behind.

        :raises acme_mt.errors.StoreError: the tenant has no store here.
        """
        binding = await self.binding(tenant_id)
        if tenant_id not in self._current:
            await self._bring_current(binding)
            self._current.add(tenant_id)
        return PostgresTenantStore(binding, slug, self)

    async def binding(self, tenant_id: str) -> Binding:
        """Where a tenant's rows live, from the registry's catalogue (then remembered).

        :raises acme_mt.errors.StoreError: the tenant has no store here.
        """
        known = self._bindings.get(tenant_id)
        if known is not None:
            return known
        pool = await self._ready()
        with translated_errors("finding a tenant store"):
            row = await pool.fetchrow(
                f"SELECT schema_name, database_dsn FROM {REGISTRY_SCHEMA}.tenant_stores"
                " WHERE tenant_id = $1",
                tenant_id,
            )
        if row is None:
            raise StoreError("the tenant has no store")
        return await self._bind(tenant_id, row["schema_name"], row["database_dsn"])

    def nonce_service(self, tenant_id: str) -> PostgresNonces:
        """The tenant's replay nonces, shared by every replica (RFC 8555 §6.5)."""
        return PostgresNonces(self, tenant_id)

    async def nonce_key(self) -> bytes:
        """The key every replica signs nonces with, made by the first that needs it."""
        if self._nonce_key is None:
            pool = await self._ready()
            made = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
            with translated_errors("the nonce key"):
                text = await pool.fetchval(
                    f"WITH made AS (INSERT INTO {REGISTRY_SCHEMA}.provider_values (name, value)"
                    " VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING value)"
                    f" SELECT value FROM made UNION ALL SELECT value"
                    f" FROM {REGISTRY_SCHEMA}.provider_values WHERE name = $1 LIMIT 1",
                    NONCE_KEY,
                    made,
                )
            self._nonce_key = base64.urlsafe_b64decode(text)
        return self._nonce_key

    async def _bind(self, tenant_id: str, schema: str, dedicated: str | None) -> Binding:
        if dedicated is None:
            await self._ready()
            pool = self._homes[home_pool(tenant_id, len(self._homes))]
        else:
            pool = await self._dedicated_pool(dedicated)
        binding = Binding(tenant_id, schema, pool, database_dsn=dedicated)
        self._bindings[tenant_id] = binding
        return binding

    async def _dedicated_pool(self, dsn: str) -> Connections:
        """The pool of a dedicated tenant's database, opened on first use."""
        pool = self._dedicated.get(dsn)
        if pool is None:
            assert self._plan is not None
            opened = ConnectionPool(
                self._plan.app.elsewhere(dsn), self._settings.dedicated_pool_max
            )
            pool = self._dedicated[dsn] = Connections([opened])
        return pool

    def _dedicated_dsn(self, slug: str) -> str | None:
        """A dedicated database named for this slug in the secrets file, if any."""
        entries = read_secrets(secrets_path(self._settings, self._data_dir)).get("dedicated", {})
        dsn = entries.get(slug) if isinstance(entries, dict) else None
        if dsn is not None and not isinstance(dsn, str):
            raise ConfigError(f"dedicated database of {slug!r} must be a DSN string")
        return None if dsn is None else Login.from_dsn(dsn).dsn

    async def _migrate_tenant(
        self, conn: asyncpg.Connection, schema: str, tenant_id: str, dedicated: str | None
    ) -> list[int]:
        """Migrate a tenant schema and its database's functions; ``conn`` is the owner's
        on the shared database."""
        if dedicated is None:
            await self._migrate_functions(conn, None)
            return await migrate_schema(conn, "tenant", schema, self._app_role, tenant_id)
        elsewhere = await self._owner().elsewhere(dedicated).connect()
        try:
            await self._migrate_functions(elsewhere, dedicated)
            return await migrate_schema(elsewhere, "tenant", schema, self._app_role, tenant_id)
        finally:
            await elsewhere.close()

    async def _bring_current(self, binding: Binding) -> None:
        """Apply pending tenant migrations, cheaply checked through the application pool."""
        with translated_errors("checking a tenant schema"):
            version = await binding.pool.fetchval(
                "SELECT coalesce(max(version), 0)"
                f" FROM {quote_ident(binding.schema)}.schema_migrations"
            )
            if version >= latest_version("tenant") and await self._functions_are_current(binding):
                return
            conn = await self._owner().connect()
            try:
                await self._migrate_tenant(
                    conn, binding.schema, binding.tenant_id, binding.database_dsn
                )
            finally:
                await conn.close()

    async def _migrate_functions(self, conn: asyncpg.Connection, dedicated: str | None) -> None:
        """Bring the write functions of one database current, once per process."""
        if dedicated not in self._functions_current:
            await migrate_schema(conn, "functions", FUNCTIONS_SCHEMA, self._app_role)
            self._functions_current.add(dedicated)

    async def _functions_are_current(self, binding: Binding) -> bool:
        """Whether the database of ``binding`` has every write function this code calls."""
        if binding.database_dsn in self._functions_current:
            return True
        table = f"{FUNCTIONS_SCHEMA}.schema_migrations"
        version = 0
        if await binding.pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            version = await binding.pool.fetchval(f"SELECT coalesce(max(version), 0) FROM {table}")
        if version < latest_version("functions"):
            return False
        self._functions_current.add(binding.database_dsn)
        return True

    async def migrate(self) -> dict[str, Any]:
        """Apply every pending migration, registry first, under the session migration lock."""
        await self._ready()
        report: dict[str, Any] = {"registry": [], "functions": [], "tenants": {}}
        with translated_errors("migrating"):
            conn = await self._owner().connect()
            try:
                await hold_migration_lock(conn)
                report["registry"] = await migrate_schema(
                    conn, "registry", REGISTRY_SCHEMA, self._app_role
                )
                report["functions"] = await migrate_schema(
                    conn, "functions", FUNCTIONS_SCHEMA, self._app_role
                )
                self._functions_current.add(None)
                rows = await conn.fetch(
                    "SELECT tenant_id, slug, schema_name, database_dsn"
                    f" FROM {REGISTRY_SCHEMA}.tenant_stores ORDER BY created, slug"
                )
                for row in rows:
                    report["tenants"][row["slug"]] = await self._migrate_tenant(
                        conn, row["schema_name"], row["tenant_id"], row["database_dsn"]
                    )
            finally:
                await conn.close()
        return report

    # Liveness of processes with serials pending signature.

    async def hold(self) -> None:
        """Hold this process's liveness lock (again, after the server restarted)."""
        if self._liveness is not None and not self._liveness.is_closed():
            return
        await self._ready()
        assert self._plan is not None
        async with self._liveness_lock:
            if self._liveness is not None and not self._liveness.is_closed():
                return
            with translated_errors("liveness lock"):
                conn = await self._plan.app.connect()
                try:
                    await conn.execute("SELECT pg_advisory_lock($1)", self.instance)
                except BaseException:
                    await conn.close()
                    raise
            self._liveness = conn

    async def dead(self, instances: set[int]) -> set[int]:
        """Those of ``instances`` whose liveness lock nobody holds (their process is gone)."""
        pool = await self._ready()
        with translated_errors("liveness check"):
            rows = await pool.fetch(
                "SELECT k FROM unnest($1::bigint[]) AS k WHERE CASE"
                " WHEN pg_try_advisory_lock(k) THEN pg_advisory_unlock(k) ELSE false END",
                sorted(instances),
            )
        return {row["k"] for row in rows}

    async def close(self) -> None:
        """Close the liveness connection and every pool; stores of this back end stop working."""
        liveness, self._liveness = self._liveness, None
        if liveness is not None and not liveness.is_closed():
            await liveness.close()
        pools = [*self._pools, *(p for d in self._dedicated.values() for p in d.pools)]
        self._pools, self._pool, self._homes, self._dedicated = [], None, [], {}
        self._bindings = {}
        self._current.clear()
        self._functions_current.clear()
        await close_pools(pools)


async def _checked_app_role(pool: Connections) -> str:
    """The application role's name, refusing one that would see past row-level security.

    :raises ConfigError: the role is a superuser or has BYPASSRLS.
    """
    row = await pool.fetchrow(
        "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    assert row is not None
    if row["rolsuper"] or row["rolbypassrls"]:
        raise ConfigError(
            f"[store] dsn role {row['rolname']!r} is superuser or BYPASSRLS; "
            "serve as a role that row-level security binds"
        )
    return str(row["rolname"])
