"""Store back ends for the contract suite: every test runs once per back end.

To add a back end, write a ``StorageUnderTest`` for it and list it in
``BACKENDS``; a back end whose service is missing should skip in ``start``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest

from acme_mt.config import StoreSettings
from acme_mt.storage.base import StoreBackend, TenantStore
from acme_mt.storage.postgres import PostgresBackend
from acme_mt.storage.sqlite import TENANT_FILE, SqliteBackend
from tests.support.postgres import run_async, session_cluster


class StorageUnderTest(Protocol):
    """One back end's storage (files, a database) that several instances share."""

    def new_backend(self) -> StoreBackend:
        """A fresh instance on the same storage, as a second process would have."""
        ...

    def edit_audit_data(self, slug: str, seq: int, data: str) -> None:
        """Overwrite one audit record's JSON data behind the store's back."""
        ...


class SqliteStorage:
    """SQLite files in a temporary data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def new_backend(self) -> StoreBackend:
        return SqliteBackend(self.data_dir)

    def edit_audit_data(self, slug: str, seq: int, data: str) -> None:
        path = self.data_dir / "tenants" / slug / TENANT_FILE
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE audit SET data = ? WHERE seq = ?", (data, seq))
        conn.close()


class PostgresStorage:
    """A database of its own on the session's PostgreSQL, served through the managed roles."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.cluster = session_cluster()
        self.dsn = self.cluster.fresh_database("contract")

    def new_backend(self) -> StoreBackend:
        settings = StoreSettings(
            backend="postgres", dsn=self.dsn, secrets_file=str(self.cluster.secrets_file)
        )
        return PostgresBackend(settings, self.data_dir)

    def edit_audit_data(self, slug: str, seq: int, data: str) -> None:
        async def edit() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                schema = await conn.fetchval(
                    "SELECT schema_name FROM acme_mt.tenant_stores WHERE slug = $1", slug
                )
                await conn.execute(
                    f'UPDATE "{schema}".audit SET data = $1 WHERE seq = $2', data, seq
                )
            finally:
                await conn.close()

        run_async(edit)


BACKENDS: dict[str, Callable[[Path], StorageUnderTest]] = {
    "sqlite": SqliteStorage,
    "postgres": PostgresStorage,
}


@pytest.fixture(params=sorted(BACKENDS))
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageUnderTest:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
async def backend(storage: StorageUnderTest) -> AsyncIterator[StoreBackend]:
    instance = storage.new_backend()
    yield instance
    await instance.close()


@pytest.fixture
async def second_backend(storage: StorageUnderTest) -> AsyncIterator[StoreBackend]:
    """Another instance on the same storage, standing in for the command-line process."""
    instance = storage.new_backend()
    yield instance
    await instance.close()


@pytest.fixture
async def store(backend: StoreBackend) -> TenantStore:
    return await backend.create_tenant_store("tenant-1", "alpha")


@pytest.fixture
def tamper(storage: StorageUnderTest) -> Callable[[str, int, str], Any]:
    return storage.edit_audit_data
