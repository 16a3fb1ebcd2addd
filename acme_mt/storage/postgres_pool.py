"""The store's connections to PostgreSQL: small lean pools, and each tenant's home among them.

The store takes a pooled connection for every call, and asyncpg's own pool
costs about as much client CPU per acquire and release as a round trip to the
server (holders, a queue, a proxy, a reset). ``ConnectionPool`` keeps only
what the store needs: idle connections on a stack, a semaphore for the size
limit, and no reset on release, since every store call ends its transaction;
a connection that comes back closed, inside a transaction, or from a call that
was cancelled or timed out is dropped instead of reused.

The shared database's connections are split into several such pools, two
connections each, and each tenant has a home pool (a stable hash of its id).
A tenant's calls then land on the same few PostgreSQL backends, which keep
that tenant's catalog entries (tables, indexes, policies) loaded, instead of
every backend loading and holding those of every tenant: at a thousand
tenants that loading was the larger part of a write. When the home pool has
no idle connection and cannot open one, a call takes another pool's idle
connection rather than wait (``Connections``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import asyncpg

from acme_mt.storage.postgres_roles import Login

logger = logging.getLogger(__name__)

Conn: TypeAlias = asyncpg.Connection

ACQUIRE_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
#: Connections in each of the shared database's pools.
CONNECTIONS_PER_POOL = 2

#: Exceptions after which a connection's state is unknown: never reuse it.
_BROKEN = (
    asyncio.CancelledError,
    TimeoutError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
)


class ConnectionPool:
    """At most ``max_size`` connections as one login, opened on demand and reused newest first."""

    def __init__(self, login: Login, max_size: int) -> None:
        self._login = login
        self._max = max(1, max_size)
        self._idle: list[Conn] = []
        self._size = 0
        self._free = asyncio.Semaphore(self._max)
        self._closed = False

    @property
    def spare(self) -> int:
        """Connections this pool could hand out now without waiting."""
        return len(self._idle) + self._max - self._size

    async def open(self, count: int) -> None:
        """Open ``count`` connections ahead of use."""
        for _ in range(min(count, self._max)):
            self.release(await self.acquire())

    async def acquire(self, timeout: float = ACQUIRE_TIMEOUT) -> Conn:
        """An idle connection, or a new one; waits at most ``timeout`` seconds for a free slot.

        :raises TimeoutError: every connection stayed in use.
        """
        if self._closed:
            raise asyncpg.InterfaceError("the store's pool is closed")
        if self._free.locked():
            async with asyncio.timeout(timeout):
                await self._free.acquire()
        else:
            await self._free.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    return conn
                self._size -= 1
            self._size += 1
            try:
                return await self._login.connect(command_timeout=COMMAND_TIMEOUT)
            except BaseException:
                self._size -= 1
                raise
        except BaseException:
            self._free.release()
            raise

    def release(self, conn: Conn, reusable: bool = True) -> None:
        """Take a connection back, or drop it when it cannot serve the next call as new."""
        if reusable and not self._closed and not conn.is_closed() and not conn.is_in_transaction():
            self._idle.append(conn)
        else:
            self._size -= 1
            if not conn.is_closed():
                conn.terminate()
        self._free.release()

    async def close(self) -> None:
        """Close idle connections now; connections in use close when they come back."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            self._size -= 1
            try:
                await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT)
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                conn.terminate()


class Connections:
    """Where a group of tenants gets connections: its home pool first, else a spare one."""

    def __init__(self, pools: Sequence[ConnectionPool], home: int = 0) -> None:
        self._pools = list(pools)
        self._home = self._pools[home]
        self._lent: dict[int, ConnectionPool] = {}

    @property
    def pools(self) -> list[ConnectionPool]:
        return list(self._pools)

    async def acquire(self, timeout: float = ACQUIRE_TIMEOUT) -> Conn:
        pool = self._home
        if pool.spare <= 0:
            spare = max(self._pools, key=lambda p: p.spare)
            if spare.spare > 0:
                pool = spare
        conn = await pool.acquire(timeout)
        self._lent[id(conn)] = pool
        return conn

    def release(self, conn: Conn, reusable: bool = True) -> None:
        self._lent.pop(id(conn)).release(conn, reusable)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A connection for one call, dropped afterwards if the call left it in doubt."""
        conn = await self.acquire()
        reusable = False
        try:
            yield conn
            reusable = True
        except _BROKEN:
            raise
        except BaseException:
            reusable = True
            raise
        finally:
            self.release(conn, reusable)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return list(await conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.connection() as conn:
            return str(await conn.execute(query, *args))


def home_pool(tenant_id: str, pools: int) -> int:
    """A tenant's home among ``pools`` pools, the same in every process."""
    return zlib.crc32(tenant_id.encode()) % pools


async def open_pools(login: Login, pool_min: int, pool_max: int) -> list[ConnectionPool]:
    """The shared database's pools: ``pool_max`` connections in all, two to a pool.

    ``pool_min`` connections open now, spread over the pools.
    """
    total = max(pool_max, pool_min, 1)
    count = max(1, total // CONNECTIONS_PER_POOL)
    pools = [
        ConnectionPool(login, total // count + (index < total % count)) for index in range(count)
    ]
    try:
        for index, pool in enumerate(pools):
            await pool.open(pool_min // count + (index < pool_min % count))
    except BaseException:
        await close_pools(pools)
        raise
    return pools


async def close_pools(pools: Sequence[ConnectionPool]) -> None:
    for pool in pools:
        await pool.close()
