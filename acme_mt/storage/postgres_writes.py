"""A tenant's writes in one round trip each, and the audit chain head they extend.

The frequent writes of a tenant store (orders, authorizations, issuance,
revocation: RFC 8555 §7.4 and §7.6) are functions in the schema
``acme_mt_functions`` (``migrations/postgres/functions``). Each write is one
call of its function sent outside any explicit transaction, so PostgreSQL runs
it in a transaction of its own: one round trip where ``BEGIN``, the tenant's
context, each statement, the audit chain and ``COMMIT`` took one each. The
functions run as the application role (SECURITY INVOKER) and set the same
transaction-local ``acme_mt.tenant_id`` as every other store call, so
row-level security binds them exactly as it binds plain statements. The call
text names no tenant, so one prepared statement per connection serves every
tenant; inside, the statements name the tenant's schema and are planned on
each call, which keeps no per-tenant plans in any server process.

The audit chain's hashes are computed here (``acme_mt.audit``), from the head
this process last saw for the tenant (``AuditHead``). The function moves the
head before touching any other row and answers ``stale``, having changed
nothing, when the head has moved on: another replica wrote, or this process
has not read the head yet. The write then runs again in an explicit
transaction that locks and reads the head first (four round trips), which also
teaches the process the head. One process's audited writes to a tenant queue
on an ``asyncio.Lock``, so they do not make each other stale. A write whose
condition does not hold raises ``no_data_found`` in the function, which rolls
it back, audit entries included, and reads here as ``unchanged``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from acme_mt.audit import chain_hash
from acme_mt.errors import StoreError
from acme_mt.models import AuditEntry, Authorization, Order, utcnow
from acme_mt.storage.postgres_db import (
    Binding,
    NothingChanged,
    in_transaction,
    one_statement,
    translated_errors,
)
from acme_mt.storage.postgres_rows import Conn, aware, to_json, to_json_or_none

logger = logging.getLogger(__name__)

#: Where the write functions live, in every database that holds tenant schemas.
FUNCTIONS_SCHEMA = "acme_mt_functions"

DONE, STALE, UNCHANGED = "done", "stale", "unchanged"

#: The audit arguments of a write that appends nothing.
NO_AUDIT: tuple[None, ...] = (None,) * 7


@dataclass(frozen=True)
class Chain:
    """Audit entries linked after a head, ready for the ``audit`` table."""

    head_seq: int
    head_hash: str
    moment: datetime
    events: list[str]
    actors: list[str]
    data: list[str]
    hashes: list[str]

    @classmethod
    def after(cls, seq: int, prev_hash: str, entries: Sequence[AuditEntry]) -> Chain:
        """Hash ``entries`` as the records that follow ``seq`` and ``prev_hash``."""
        moment = utcnow()
        events, actors, texts, hashes = [], [], [], []
        digest = prev_hash
        for number, entry in enumerate(entries, start=seq + 1):
            # Hash exactly what a reader will get back from the json column.
            text = to_json(entry.data)
            digest = chain_hash(digest, number, moment, entry.event, entry.actor, json.loads(text))
            events.append(entry.event)
            actors.append(entry.actor)
            texts.append(text)
            hashes.append(digest)
        return cls(seq, prev_hash, moment, events, actors, texts, hashes)

    @property
    def last(self) -> tuple[int, str]:
        """The head once these records are in."""
        if not self.hashes:
            return self.head_seq, self.head_hash
        return self.head_seq + len(self.hashes), self.hashes[-1]

    @property
    def arguments(self) -> tuple[Any, ...]:
        """The audit arguments every write function takes after the tenant's."""
        return (
            self.head_seq,
            self.head_hash,
            self.moment,
            self.events,
            self.actors,
            self.data,
            self.hashes,
        )


async def lock_audit_head(conn: Conn) -> tuple[int, str]:
    """Lock the tenant's audit chain head for the rest of the transaction and read it.

    Every audited write locks the head before any other row, so one tenant's
    writes, from any process, queue in one order and cannot deadlock.
    """
    head = await conn.fetchrow("SELECT seq, hash FROM audit_head FOR UPDATE")
    if head is None:
        raise ValueError("the tenant's audit chain has no head row")
    return head["seq"], head["hash"]


async def insert_chain(conn: Conn, chain: Chain) -> None:
    """Append chained records and move the head, inside the transaction that locked it."""
    if not chain.hashes:
        return
    seq, last_hash = chain.last
    await conn.execute(
        "WITH added AS (INSERT INTO audit (seq, time, event, actor, data, prev_hash, hash)"
        " SELECT $1 + r.n, $2, r.event, r.actor, r.data::json,"
        " CASE WHEN r.n = 1 THEN $3 ELSE ($7::text[])[r.n - 1] END, r.hash"
        " FROM unnest($4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY"
        " AS r (event, actor, data, hash, n))"
        " UPDATE audit_head SET seq = $8, hash = $9",
        chain.head_seq,
        chain.moment,
        chain.head_hash,
        chain.events,
        chain.actors,
        chain.data,
        chain.hashes,
        seq,
        last_hash,
    )


# Limitation: the functions' statements are parsed and planned on every call,
# about half of a write's CPU in the server. Plans kept per tenant cost 50 to
# 100 KiB per statement, tenant and server process; a bounded cache of
# per-tenant prepared statements that a single round trip can reach would end it.
@functools.cache
def call_statement(function: str, values: int) -> str:
    """``SELECT`` of a write function with the tenant's and the audit arguments first."""
    count = 2 + len(NO_AUDIT) + values
    placeholders = ", ".join(f"${n}" for n in range(1, count + 1))
    return f"SELECT {FUNCTIONS_SCHEMA}.{function}({placeholders})"


def checked_status(status: Any) -> str:
    """A write function's answer, refusing what none of them says."""
    if status not in (DONE, STALE, UNCHANGED):
        raise StoreError("the store answered a write it does not make")
    return str(status)


# Arguments of the functions, in the order they declare them.


def order_row_values(order: Order | None) -> tuple[Any, ...]:
    """An order's mutable columns (``o_id`` to ``o_replaces``); NULLs for no order."""
    if order is None:
        return (None,) * 9
    serial = order.certificate_serial
    return (
        order.id,
        order.status,
        aware(order.expires),
        order.not_before,
        order.not_after,
        to_json_or_none(order.error),
        None if serial is None else serial.lower(),
        order.profile,
        order.replaces,
    )


def new_order_values(order: Order) -> tuple[Any, ...]:
    """Every column of a new order and its authorization ids in link order."""
    serial = order.certificate_serial
    return (
        order.id,
        order.account_id,
        order.status,
        to_json([i.to_json() for i in order.identifiers]),
        aware(order.expires),
        aware(order.created),
        order.not_before,
        order.not_after,
        to_json_or_none(order.error),
        None if serial is None else serial.lower(),
        order.profile,
        order.replaces,
        list(order.authorization_ids),
    )


def authorization_arrays(authorizations: Sequence[Authorization]) -> tuple[list[Any], ...]:
    """Column arrays of new authorizations, then of their challenges, in their order."""
    columns: tuple[list[Any], ...] = tuple([] for _ in range(16))
    for a in authorizations:
        row = (
            a.id,
            a.account_id,
            a.identifier.type,
            a.identifier.value,
            a.wildcard,
            a.status,
            aware(a.expires),
            aware(a.created),
        )
        for column, value in zip(columns[:8], row, strict=True):
            column.append(value)
        for position, c in enumerate(a.challenges):
            challenge = (
                c.id,
                c.authorization_id,
                position,
                c.type,
                c.token,
                c.status,
                c.validated,
                to_json_or_none(c.error),
            )
            for column, value in zip(columns[8:], challenge, strict=True):
                column.append(value)
    return columns


async def call_function(
    binding: Binding,
    function: str,
    values: tuple[Any, ...],
    audit: Sequence[AuditEntry],
    what: str,
) -> str:
    """Write through ``function`` with ``values``; ``done`` or ``unchanged``.

    One round trip when there is no audit or the head this process knows is
    current; otherwise the call runs again with the head locked first.

    :raises acme_mt.errors.StoreError: a record the write needs is missing.
    """
    statement = call_statement(function, len(values))
    tenant = (binding.tenant_id, binding.schema)
    if not audit:
        return await _call_once(binding, statement, (*tenant, *NO_AUDIT, *values), what)

    async def locked(conn: Conn) -> tuple[str, Chain]:
        chain = Chain.after(*await lock_audit_head(conn), audit)
        try:
            status = await conn.fetchval(statement, *tenant, *chain.arguments, *values)
        except asyncpg.NoDataFoundError:
            raise NothingChanged((UNCHANGED, chain)) from None
        return checked_status(status), chain

    head = binding.head
    async with head.lock:
        if head.seq is not None:
            chain = Chain.after(head.seq, head.hash, audit)
            status = await _call_once(
                binding, statement, (*tenant, *chain.arguments, *values), what
            )
            if status == DONE:
                head.learn(*chain.last)
            if status != STALE:
                return status
        status, chain = await in_transaction(binding, locked, what)
        if status == STALE:
            raise StoreError("the audit chain moved under its lock")
        head.learn(*(chain.last if status == DONE else (chain.head_seq, chain.head_hash)))
        return status


async def _call_once(
    binding: Binding, statement: str, arguments: tuple[Any, ...], what: str
) -> str:
    with translated_errors(what):
        try:
            return checked_status(await one_statement(binding, statement, arguments))
        except asyncpg.NoDataFoundError:
            return UNCHANGED
