"""Store back ends for the contract suite: every test runs once per back end.

To add a back end, write a ``StorageUnderTest`` for it and list it in
``BACKENDS``; a back end whose service is missing should skip in ``start``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

from acme_mt.storage.base import StoreBackend, TenantStore
from acme_mt.storage.sqlite import TENANT_FILE, SqliteBackend


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


BACKENDS: dict[str, Callable[[Path], StorageUnderTest]] = {
    "sqlite": SqliteStorage,
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
