"""Replay nonces (RFC 8555 §6.5) in PostgreSQL, so every replica honours every other's.

Nonces are signed (``acme_mt.tenancy.nonces.SignedNonces``) with a key that
all replicas read from the registry, so issuing one writes nothing. Redeeming
checks the signature and the age, then records the nonce in the tenant's
``nonces`` table, under the same row-level security as the rest of its rows:
one INSERT sent with the tenant's context in a single round trip, or, for a
request signed with an account's ``kid``, in the same call that reads the
account (``redeem_for_account``). A nonce is single-use across replicas
because only one INSERT of its primary key can succeed. Rows expire with
their nonces, and each service sweeps its tenant's expired rows now and then
as it redeems.

The key guards no secret: knowing it lets one mint nonces the server would
accept once each, which is what asking the server for them gives anyway.
Replay protection rests on the spent rows, which only the server writes.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Protocol

from acme_mt.models import Account
from acme_mt.storage.postgres_db import (
    Binding,
    read_rows,
    row_count,
    run_script,
    translated_errors,
)
from acme_mt.storage.postgres_rows import ACCOUNT_COLUMNS, account_from_row
from acme_mt.storage.postgres_writes import FUNCTIONS_SCHEMA
from acme_mt.tenancy.nonces import SignedNonces

logger = logging.getLogger(__name__)

MAX_AGE_SECONDS = 900
SWEEP_SECONDS = 60.0
#: Seconds a nonce may claim to come from the future: replicas' clocks differ a little.
CLOCK_SLACK_SECONDS = 30

_ACCOUNT_WITH_NONCE = (
    f"SELECT {ACCOUNT_COLUMNS}, nonce_fresh"
    f" FROM {FUNCTIONS_SCHEMA}.account_with_nonce($1, $2, $3, $4, $5, $6)"
)


class BindingSource(Protocol):
    async def binding(self, tenant_id: str) -> Binding: ...

    async def nonce_key(self) -> bytes: ...


class PostgresSpentNonces:
    """One tenant's spent set: its ``nonces`` table."""

    def __init__(self, source: BindingSource, tenant_id: str) -> None:
        self._source = source
        self._tenant_id = tenant_id
        self._swept = time.monotonic()

    async def spend(self, nonce_id: bytes, expires: int) -> bool:
        """Record the nonce; False when some replica recorded it first.

        :raises TenantUnavailable: PostgreSQL cannot be reached.
        """
        binding = await self._source.binding(self._tenant_id)
        sweep = " DELETE FROM nonces WHERE expires < now();" if self.sweep_due() else ""
        # The id is bytes made into hex here and the time an int: both safe as literals.
        until = datetime.fromtimestamp(expires, UTC).isoformat()
        script = (
            f"{binding.context_statement};{sweep} INSERT INTO nonces (value, expires)"
            f" VALUES ('{nonce_id.hex()}', '{until}') ON CONFLICT (value) DO NOTHING"
        )
        with translated_errors(f"nonces of {self._tenant_id}"):
            status = await run_script(binding.pool, script)
        return row_count(status) == 1

    def sweep_due(self) -> bool:
        """True once a ``SWEEP_SECONDS``: the caller's write deletes the expired rows."""
        if time.monotonic() - self._swept <= SWEEP_SECONDS:
            return False
        self._swept = time.monotonic()
        return True


class PostgresNonces:
    """One tenant's nonces, shared by every process on the same database."""

    def __init__(
        self, source: BindingSource, tenant_id: str, max_age_seconds: int = MAX_AGE_SECONDS
    ) -> None:
        self._source = source
        self._tenant_id = tenant_id
        self._max_age = int(max_age_seconds)
        self._signed: SignedNonces | None = None
        self._spent = PostgresSpentNonces(source, tenant_id)

    async def issue(self) -> str:
        """A fresh nonce; nothing is written until it comes back.

        :raises TenantUnavailable: the key could not be read (first use only).
        """
        return await (await self._nonces()).issue()

    async def redeem(self, nonce: str) -> bool:
        """True exactly once for a nonce issued here (by any replica) and not yet expired.

        :raises TenantUnavailable: PostgreSQL cannot be reached.
        """
        return await (await self._nonces()).redeem(nonce)

    async def redeem_for_account(self, nonce: str, account_id: str) -> tuple[Account | None, bool]:
        """The account by id and whether the nonce was fresh, spending it: one round trip.

        A nonce that is not this tenant's, or too old, is not sent; the
        account is read all the same.

        :raises TenantUnavailable: PostgreSQL cannot be reached.
        """
        claim = (await self._nonces()).claim(nonce)
        value, until = (None, None)
        if claim is not None:
            value, until = claim[0].hex(), datetime.fromtimestamp(claim[1], UTC)
        binding = await self._source.binding(self._tenant_id)
        arguments = (binding.tenant_id, binding.schema, account_id, value, until)
        with translated_errors(f"nonces of {self._tenant_id}"):
            rows = await read_rows(
                binding, _ACCOUNT_WITH_NONCE, (*arguments, self._spent.sweep_due())
            )
        row = rows[0]
        account = None if row["id"] is None else account_from_row(row)
        return account, bool(row["nonce_fresh"])

    async def _nonces(self) -> SignedNonces:
        if self._signed is None:
            key = await self._source.nonce_key()
            self._signed = SignedNonces(
                key, self._tenant_id, self._spent, self._max_age, clock_slack=CLOCK_SLACK_SECONDS
            )
        return self._signed
