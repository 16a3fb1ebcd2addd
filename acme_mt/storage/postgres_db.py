"""Transactions bound to one tenant on the shared pools, and PostgreSQL's errors as ours.

Every store call is one transaction in the tenant's context:
``acme_mt.tenant_id`` (which the row-level security policies compare with each
row's ``tenant_id``), set with ``set_config(..., true)`` so that it ends with
the transaction and never leaks to the next user of the pooled connection.
Writes, and the reads every ACME request makes (its account, order,
authorization, challenge or certificate), are one statement, a call of the
store's functions that sets the context itself
(``acme_mt.storage.postgres_writes``, ``migrations/postgres/functions``).
Other reads and the rarer writes open a transaction that sets the context
and a ``search_path`` of the tenant's schema, ``BEGIN`` and both in one round
trip; a connection that turns out dead on that first round trip is swapped
for a fresh one, since nothing ran yet.

A server that is down, restarting or out of connections becomes
``TenantUnavailable`` (503 with a retry hint); the pools reconnect by
themselves once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from acme_mt.errors import Conflict, StoreError, TenantUnavailable
from acme_mt.storage.base import TENANT_ID
from acme_mt.storage.postgres_pool import Conn as Conn
from acme_mt.storage.postgres_pool import Connections
from acme_mt.storage.postgres_roles import quote_ident, quote_literal

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Tenant ids become schema names; they come from onboarding, never from a request.

#: Failures of the server or the link to it, not of the statement: answer 503.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

#: A pooled connection that died while idle shows one of these on its first use.
DEAD_CONNECTION = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)


class NothingChanged(Exception):
    """Raised inside a write to roll it back (audit included) and return ``result``."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


def schema_for(tenant_id: str) -> str:
    """The schema of a tenant: ``tenant_`` and its id, folded to a plain identifier.

    :raises StoreError: the id could not have come from onboarding.
    """
    if not TENANT_ID.fullmatch(tenant_id):
        raise StoreError("invalid tenant id")
    return "tenant_" + tenant_id.lower().replace("-", "_")


class AuditHead:
    """The last link of one tenant's audit chain as this process knows it.

    Only a hint: a function checks it against the locked head before it
    writes. ``lock`` queues this process's audited writes to the tenant.
    """

    def __init__(self) -> None:
        self.seq: int | None = None
        self.hash = ""
        self.lock = asyncio.Lock()

    def learn(self, seq: int, digest: str) -> None:
        """Remember the head a committed transaction left (call with ``lock`` held)."""
        self.seq, self.hash = seq, digest


@dataclass(frozen=True)
class Binding:
    """Where one tenant's rows live: connections, a schema, and the id the policies expect."""

    tenant_id: str
    schema: str
    pool: Connections
    #: The dedicated database (a DSN without credentials), or None for the shared one.
    database_dsn: str | None = None
    #: The audit chain head as this process last saw it, shared by the tenant's stores.
    head: AuditHead = field(default_factory=AuditHead, compare=False, repr=False)

    @property
    def context_statement(self) -> str:
        """Sets the tenant's context for the rest of the transaction (literals checked)."""
        return (
            "SELECT set_config('acme_mt.tenant_id', "
            f"{quote_literal(self.tenant_id)}, true), set_config('search_path', "
            f"{quote_literal(quote_ident(self.schema))}, true)"
        )

    @property
    def context_sql(self) -> str:
        """Opens a transaction in the tenant's context, in one round trip."""
        return "BEGIN; " + self.context_statement


@contextlib.contextmanager
def translated_errors(what: str) -> Any:
    """Turn asyncpg's exceptions into the store's domain errors."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise Conflict("a record with this key exists already") from exc
    except asyncpg.RaiseError as exc:
        # Raised by the store's own functions, with a message written for callers.
        raise StoreError(str(exc)) from exc
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise StoreError("the change breaks a rule of the store") from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        logger.warning("%s: permission denied: %s", what, exc)
        raise StoreError("the store refused the change") from exc
    except UNAVAILABLE as exc:
        logger.warning("%s: PostgreSQL unavailable: %s", what, type(exc).__name__)
        raise TenantUnavailable() from exc
    except asyncpg.PostgresError as exc:
        logger.error("%s: PostgreSQL error %s", what, exc.sqlstate)
        raise StoreError("the store failed") from exc


@contextlib.asynccontextmanager
async def connection(pool: Connections, opening: str) -> AsyncIterator[Conn]:
    """A pooled connection whose ``opening`` statement has run, retried once on a dead one."""
    for attempt in (1, 2):
        async with pool.connection() as conn:
            try:
                await conn.execute(opening)
            except DEAD_CONNECTION:
                if attempt == 2:
                    raise
                conn.terminate()
                continue
            yield conn
            return


async def run_script(pool: Connections, script: str) -> str:
    """Run statements with literal values in one round trip; the last command's status.

    Retried once on a connection that died while idle in the pool.
    """
    for attempt in (1, 2):
        async with pool.connection() as conn:
            try:
                return str(await conn.execute(script))
            except DEAD_CONNECTION:
                if attempt == 2:
                    raise
                conn.terminate()
    raise AssertionError("unreachable")


async def one_statement(binding: Binding, statement: str, arguments: Sequence[Any]) -> Any:
    """Run one statement in a transaction of its own (no ``BEGIN``): one round trip.

    The statement must enter the tenant's context itself. Not retried on a
    dead connection, since it may have run; the caller gets ``TenantUnavailable``
    (through ``translated_errors``) as when a ``COMMIT`` is lost.
    """
    async with binding.pool.connection() as conn:
        return await conn.fetchval(statement, *arguments)


async def read_rows(binding: Binding, statement: str, arguments: Sequence[Any]) -> list[Any]:
    """The rows of one statement in a transaction of its own: one round trip.

    For reads through a function that enters the tenant's context itself;
    retried once on a connection that died while idle in the pool, since a
    read changes nothing.
    """
    for attempt in (1, 2):
        async with binding.pool.connection() as conn:
            try:
                return list(await conn.fetch(statement, *arguments))
            except DEAD_CONNECTION:
                if attempt == 2:
                    raise
                conn.terminate()
    raise AssertionError("unreachable")


# Limitation: lists, lookups outside the ACME request path and the rarer writes
# still take three round trips or more (BEGIN with the context, each
# statement, COMMIT); a read function each, as for the reads of a request,
# would make them one.
async def in_transaction(
    binding: Binding, body: Callable[[Conn], Awaitable[T]], what: str = "store"
) -> T:
    """Run ``body`` in one transaction in the tenant's context.

    ``NothingChanged`` rolls the transaction back and returns its result; any
    other exception rolls back and propagates, translated by ``translated_errors``.
    """
    with translated_errors(what):
        async with connection(binding.pool, binding.context_sql) as conn:
            try:
                result = await body(conn)
            except NothingChanged as unchanged:
                await _rollback(conn)
                return unchanged.result  # type: ignore[no-any-return]
            except BaseException:
                await _rollback(conn)
                raise
            await conn.execute("COMMIT")
            return result


async def _rollback(conn: Conn) -> None:
    if conn.is_closed():
        return
    with contextlib.suppress(*UNAVAILABLE, asyncpg.PostgresError):
        await conn.execute("ROLLBACK")


def row_count(status: str) -> int:
    """The count at the end of a command status such as ``UPDATE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def require_changed(status: str, what: str) -> None:
    """Fail an update that matched no row, so the caller's transaction rolls back."""
    if row_count(status) == 0:
        raise StoreError(f"no such {what}")
