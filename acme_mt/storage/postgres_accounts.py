"""One tenant's accounts, EAB keys, EST credentials and audit chain in PostgreSQL.

``TenantStoreBase`` holds what every call of a PostgreSQL tenant store shares:
the binding (pool, schema, tenant id) and one transaction per call in the
tenant's row-level security context (``acme_mt.storage.postgres_db``); writes
append the caller's audit entries to the tenant's chain in that same
transaction, and a write that changes nothing appends nothing.
``acme_mt.storage.postgres_tenant`` builds the ACME orders and issuance on it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from acme_mt.errors import Conflict, StoreError
from acme_mt.models import Account, AuditEntry, EabKey, VerifiedDomain, utcnow
from acme_mt.storage.base import AuditRecord, EstCredential
from acme_mt.storage.postgres_db import (
    Binding,
    Conn,
    NothingChanged,
    in_transaction,
    read_rows,
    require_changed,
    row_count,
    translated_errors,
)
from acme_mt.storage.postgres_rows import (
    ACCOUNT_COLUMNS,
    AUDIT_COLUMNS,
    EAB_COLUMNS,
    EST_COLUMNS,
    Row,
    account_from_row,
    account_values,
    audit_from_row,
    aware,
    eab_key_from_row,
    eab_key_values,
    est_credential_from_row,
)
from acme_mt.storage.postgres_writes import (
    FUNCTIONS_SCHEMA,
    Chain,
    call_function,
    insert_chain,
    lock_audit_head,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ACCOUNT_BY = f"SELECT {ACCOUNT_COLUMNS} FROM {FUNCTIONS_SCHEMA}.account_by($1, $2, $3, $4)"


class IssuerLiveness(Protocol):
    """Tells which processes that recorded pending serials are still alive."""

    instance: int

    async def hold(self) -> None:
        """Make sure this process's liveness lock is held before it records a serial."""
        ...

    async def dead(self, instances: set[int]) -> set[int]:
        """Those of ``instances`` whose process no longer holds its lock."""
        ...


class TenantStoreBase:
    """Transactions in one tenant's context, and its accounts, keys and audit chain."""

    def __init__(self, binding: Binding, slug: str, liveness: IssuerLiveness) -> None:
        self.tenant_id = binding.tenant_id
        self.slug = slug
        self._binding = binding
        self._liveness = liveness
        self._closed = False

    async def _run(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        return await in_transaction(self._binding, body, f"tenant {self.slug}")

    async def _write(self, body: Callable[[Conn], Awaitable[T]], audit: Sequence[AuditEntry]) -> T:
        """Run ``body`` and append ``audit`` in one transaction, the chain head locked first."""
        if not audit:
            return await self._run(body)

        async def run(conn: Conn) -> tuple[T, Chain | None]:
            seq, digest = await lock_audit_head(conn)
            try:
                result = await body(conn)
            except NothingChanged as unchanged:
                raise NothingChanged((unchanged.result, None)) from None
            chain = Chain.after(seq, digest, audit)
            await insert_chain(conn, chain)
            return result, chain

        head = self._binding.head
        async with head.lock:
            result, chain = await self._run(run)
            if chain is not None:
                head.learn(*chain.last)
        return result

    async def _call(
        self, function: str, values: tuple[Any, ...], audit: Sequence[AuditEntry]
    ) -> str:
        """Write through one of the store's functions (``acme_mt.storage.postgres_writes``)."""
        if self._closed:
            raise StoreError("the store is closed")
        return await call_function(self._binding, function, values, audit, f"tenant {self.slug}")

    # Accounts and EAB keys (RFC 8555 §7.3).

    async def get_account(self, account_id: str) -> Account | None:
        return await self._account_by("id", account_id)

    async def get_account_by_thumbprint(self, thumbprint: str) -> Account | None:
        return await self._account_by("thumbprint", thumbprint)

    async def _account_by(self, column: str, value: str) -> Account | None:
        """The account read through ``account_by``: one round trip, as every JWS needs one."""
        rows = await self._read(_ACCOUNT_BY, (column, value))
        return account_from_row(rows[0]) if rows else None

    async def _read(self, statement: str, values: tuple[Any, ...]) -> list[Row]:
        """The rows of a read function called with this tenant's id, schema and ``values``."""
        if self._closed:
            raise StoreError("the store is closed")
        binding = self._binding
        with translated_errors(f"tenant {self.slug}"):
            return await read_rows(binding, statement, (binding.tenant_id, binding.schema, *values))

    async def create_account(self, account: Account, audit: Sequence[AuditEntry] = ()) -> Account:
        """Insert an account and bind its EAB key, or return the account that has its key."""
        by_thumbprint = f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE thumbprint = $1"

        async def body(conn: Conn) -> Account:
            row = await conn.fetchrow(by_thumbprint, account.thumbprint)
            if row is not None:
                raise NothingChanged(account_from_row(row))
            if account.eab_kid is not None:
                key = await conn.fetchrow(
                    f"SELECT {EAB_COLUMNS} FROM eab_keys WHERE kid = $1 FOR UPDATE",
                    account.eab_kid,
                )
                # The lock may have waited for a race winner with this very key.
                row = await conn.fetchrow(by_thumbprint, account.thumbprint)
                if row is not None:
                    raise NothingChanged(account_from_row(row))
                await _check_eab_unbound(conn, key)
            inserted = await conn.fetchval(
                f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (thumbprint) DO NOTHING RETURNING id",
                *account_values(account),
            )
            if inserted is None:
                raise _Raced()
            if account.eab_kid is not None:
                await conn.execute(
                    "UPDATE eab_keys SET account_id = COALESCE(account_id, $1) WHERE kid = $2",
                    account.id,
                    account.eab_kid,
                )
            return account

        try:
            return await self._write(body, audit)
        except _Raced:
            # Another process inserted this key first and has committed by now.
            winner = await self.get_account_by_thumbprint(account.thumbprint)
            if winner is None:
                raise StoreError("the account vanished after a race") from None
            return winner

    async def update_account(self, account: Account, audit: Sequence[AuditEntry] = ()) -> None:
        """Store an account's key, status and contacts (its EAB binding never changes)."""
        _id, thumbprint, jwk, status, contact, _created, _kid = account_values(account)

        async def body(conn: Conn) -> None:
            result = await conn.execute(
                "UPDATE accounts SET thumbprint = $2, jwk = $3, status = $4, contact = $5"
                " WHERE id = $1",
                account.id,
                thumbprint,
                jwk,
                status,
                contact,
            )
            require_changed(result, "account")

        await self._write(body, audit)

    async def get_eab_key(self, kid: str) -> EabKey | None:
        query = f"SELECT {EAB_COLUMNS} FROM eab_keys WHERE kid = $1"
        row = await self._run(lambda conn: conn.fetchrow(query, kid))
        return None if row is None else eab_key_from_row(row)

    async def list_eab_keys(self) -> list[EabKey]:
        query = f"SELECT {EAB_COLUMNS} FROM eab_keys ORDER BY created, kid"
        rows = await self._run(lambda conn: conn.fetch(query))
        return [eab_key_from_row(row) for row in rows]

    async def create_eab_key(self, key: EabKey, audit: Sequence[AuditEntry] = ()) -> None:
        async def body(conn: Conn) -> None:
            await conn.execute(
                f"INSERT INTO eab_keys ({EAB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                *eab_key_values(key),
            )

        await self._write(body, audit)

    async def revoke_eab_key(self, kid: str, audit: Sequence[AuditEntry] = ()) -> bool:
        """Stop an EAB key binding new accounts; accounts bound already keep working."""

        async def body(conn: Conn) -> bool:
            result = await conn.execute(
                "UPDATE eab_keys SET revoked = true WHERE kid = $1 AND NOT revoked", kid
            )
            if row_count(result) == 0:
                raise NothingChanged(False)
            return True

        return await self._write(body, audit)

    # Domains proven by DNS TXT, for pre-validated EAB accounts.

    async def list_domains(self) -> list[VerifiedDomain]:
        """The tenant's domains, verified or still waiting for their TXT record."""
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT domain, token, requested, verified FROM verified_domains ORDER BY domain"
            )
        )
        return [
            VerifiedDomain(row["domain"], row["token"], row["requested"], row["verified"])
            for row in rows
        ]

    async def save_domain(self, domain: VerifiedDomain, audit: Sequence[AuditEntry] = ()) -> None:
        """Insert or replace a domain's verification state."""

        async def body(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO verified_domains (domain, token, requested, verified)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (domain) DO UPDATE SET"
                " token = excluded.token, requested = excluded.requested,"
                " verified = excluded.verified",
                domain.domain,
                domain.token,
                aware(domain.requested),
                domain.verified,
            )

        await self._write(body, audit)

    # EST enrollment credentials (RFC 7030 §3.2.3).

    async def get_est_credential(self, username: str) -> EstCredential | None:
        query = f"SELECT {EST_COLUMNS} FROM est_credentials WHERE username = $1"
        row = await self._run(lambda conn: conn.fetchrow(query, username))
        return None if row is None else est_credential_from_row(row)

    async def create_est_credential(
        self, credential: EstCredential, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """:raises acme_mt.errors.Conflict: the id or username is taken."""

        async def body(conn: Conn) -> None:
            await conn.execute(
                f"INSERT INTO est_credentials ({EST_COLUMNS}) VALUES ($1, $2, $3, $4, $5)",
                credential.id,
                credential.username,
                credential.password_hash,
                aware(credential.created),
                credential.revoked_at,
            )

        await self._write(body, audit)

    async def revoke_est_credential(
        self, credential_id: str, when: datetime, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        async def body(conn: Conn) -> bool:
            result = await conn.execute(
                "UPDATE est_credentials SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                credential_id,
                aware(when),
            )
            if row_count(result) == 0:
                raise NothingChanged(False)
            return True

        return await self._write(body, audit)

    # The audit chain.

    async def append_audit(self, audit: Sequence[AuditEntry]) -> None:
        if audit:
            await self._call("record_audit", (), audit)

    async def list_audit(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        rows = await self._run(
            lambda conn: conn.fetch(
                f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                after_seq,
                limit,
            )
        )
        return [audit_from_row(row) for row in rows]

    async def close(self) -> None:
        """Forget the binding; the pool belongs to the back end and stays open."""
        self._closed = True


class _Raced(Exception):
    """The account's thumbprint was inserted by another transaction first."""


async def _check_eab_unbound(conn: Conn, row: Row | None) -> None:
    """RFC 8555 §7.3.4: a key binds as many accounts as its policy allows (one by
    default); a revoked or expired key binds none. The caller holds the key's row lock."""
    if row is None:
        raise Conflict("the external account key is unknown")
    key = eab_key_from_row(row)
    if not key.usable(utcnow()):
        raise Conflict("the external account key is revoked or expired")
    bound = await conn.fetchval("SELECT count(*) FROM accounts WHERE eab_kid = $1", key.kid)
    if key.account_id is not None and bound == 0:
        bound = 1
    if bound >= key.policy.max_accounts:
        raise Conflict("the external account key is bound to its accounts already")
