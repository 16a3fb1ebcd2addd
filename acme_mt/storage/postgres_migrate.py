"""Versioned SQL migrations for PostgreSQL: the registry schema and every tenant schema.

The files are plain SQL in ``migrations/postgres/<kind>/NNNN_description.sql``
(read by ``acme_mt.storage.migrate.load_migrations``). They may name the values
the runner fills in as psql does: ``:'tenant_id'`` becomes a quoted literal and
``:"app_role"`` a quoted identifier, so a file also runs under ``psql -v``.

Each schema records what it has applied in its own ``schema_migrations``
table. Every migration runs in one transaction that first takes an advisory
lock on the schema, so two processes (two replicas starting, or ``acme-mt db
migrate`` beside a server) apply each migration exactly once; the runner is
safe to run again at any time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import asyncpg

from acme_mt.storage.migrate import Migration, load_migrations
from acme_mt.storage.postgres_roles import quote_ident, quote_literal

logger = logging.getLogger(__name__)

REGISTRY_SCHEMA = "acme_mt"
#: The first key of every advisory lock the runner takes ("acmt"); the second is the schema's.
LOCK_CLASS = 0x61636D74

_VARIABLE = re.compile(r"""(?<!:):(?:"(\w+)"|'(\w+)')""")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def render(sql: str, variables: Mapping[str, str]) -> str:
    """Fill in ``:"name"`` and ``:'name'`` as psql would.

    :raises KeyError: the file names a variable the runner does not have.
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return quote_ident(variables[match.group(1)])
        return quote_literal(variables[match.group(2)])

    return _VARIABLE.sub(substitute, sql)


def latest_version(kind: str) -> int:
    """The newest migration version of ``kind`` this code knows."""
    migrations = load_migrations("postgres", kind)
    return migrations[-1].version if migrations else 0


async def applied_versions(conn: asyncpg.Connection, schema: str) -> set[int]:
    """What ``schema`` has applied; empty when it does not exist yet."""
    exists = await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{quote_ident(schema)}.schema_migrations"
    )
    if not exists:
        return set()
    rows = await conn.fetch(f"SELECT version FROM {quote_ident(schema)}.schema_migrations")
    return {row["version"] for row in rows}


async def migrate_schema(
    conn: asyncpg.Connection,
    kind: str,
    schema: str,
    app_role: str,
    tenant_id: str | None = None,
) -> list[int]:
    """Create ``schema`` if needed and apply its pending migrations; returns the versions applied.

    ``conn`` is the owner role's, outside any transaction.
    """
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"{schema!r} is not a schema name acme-mt makes")
    variables = {"app_role": app_role, "tenant_id": tenant_id or ""}
    await _prepare(conn, schema, app_role)
    applied: list[int] = []
    for migration in load_migrations("postgres", kind):
        if await _apply(conn, schema, migration, variables):
            applied.append(migration.version)
    if applied:
        logger.info("schema %s: applied migrations %s", schema, applied)
    return applied


async def _prepare(conn: asyncpg.Connection, schema: str, app_role: str) -> None:
    """The schema, its ``schema_migrations`` table and the application role's way in."""
    name = quote_ident(schema)
    async with conn.transaction():
        await _lock(conn, schema)
        await conn.execute(
            f"CREATE SCHEMA IF NOT EXISTS {name};"
            f" CREATE TABLE IF NOT EXISTS {name}.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied timestamptz NOT NULL DEFAULT now());"
            f" GRANT USAGE ON SCHEMA {name} TO {quote_ident(app_role)};"
            f" GRANT SELECT ON {name}.schema_migrations TO {quote_ident(app_role)}"
        )


async def _apply(
    conn: asyncpg.Connection, schema: str, migration: Migration, variables: Mapping[str, str]
) -> bool:
    """Apply one migration unless it is recorded already; True when this call applied it."""
    name = quote_ident(schema)
    async with conn.transaction():
        await _lock(conn, schema)
        done = await conn.fetchval(
            f"SELECT 1 FROM {name}.schema_migrations WHERE version = $1", migration.version
        )
        if done:
            return False
        # Unqualified names in the file land in this schema; a tenant migration
        # that moves rows sees them through the row-level security policies.
        await conn.execute(
            "SELECT set_config('search_path', $1, true), set_config('acme_mt.tenant_id', $2, true)",
            name,
            variables["tenant_id"],
        )
        await conn.execute(render(migration.sql, variables))
        await conn.execute(
            f"INSERT INTO {name}.schema_migrations (version, name) VALUES ($1, $2)",
            migration.version,
            migration.name,
        )
    return True


async def _lock(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK_CLASS, schema)


async def hold_migration_lock(conn: asyncpg.Connection) -> None:
    """Take the session lock ``acme-mt db migrate`` holds for its run, waiting for another."""
    await conn.execute("SELECT pg_advisory_lock($1, 0)", LOCK_CLASS)
