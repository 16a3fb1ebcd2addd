"""Replay nonces (RFC 8555 §6.5) in PostgreSQL, so every replica honours every other's.

Each tenant schema has a ``nonces`` table under the same row-level security as
the rest of its rows. Issuing is one INSERT and redeeming one DELETE, each sent
with the tenant's context in a single round trip; a nonce is single-use across
replicas because only one DELETE can remove its row. Nonces expire after
``max_age_seconds``, and each service sweeps its tenant's expired rows now and
then while it issues.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Protocol

from acme_mt.errors import TenantUnavailable
from acme_mt.storage.postgres_db import Binding, row_count, run_script, translated_errors

logger = logging.getLogger(__name__)

MAX_AGE_SECONDS = 900
SWEEP_SECONDS = 60.0

#: What ``issue`` hands out; anything else cannot be ours and is refused unseen.
_NONCE = re.compile(r"^[A-Za-z0-9_-]{22}$")


class BindingSource(Protocol):
    async def binding(self, tenant_id: str) -> Binding: ...


class PostgresNonces:
    """One tenant's nonces, shared by every process on the same database."""

    def __init__(
        self, source: BindingSource, tenant_id: str, max_age_seconds: int = MAX_AGE_SECONDS
    ) -> None:
        self._source = source
        self._tenant_id = tenant_id
        self._max_age = int(max_age_seconds)
        self._swept = time.monotonic()

    async def issue(self) -> str:
        """A fresh nonce, recorded for any replica to redeem once."""
        nonce = secrets.token_urlsafe(16)
        sweep = ""
        if time.monotonic() - self._swept > SWEEP_SECONDS:
            self._swept = time.monotonic()
            sweep = "; DELETE FROM nonces WHERE expires < now()"
        try:
            binding = await self._source.binding(self._tenant_id)
            # The nonce is ours (base64url) and the age an int: both safe as literals.
            await self._send(
                binding,
                f"{binding.context_sql}; INSERT INTO nonces (value, expires) VALUES"
                f" ('{nonce}', now() + interval '{self._max_age} seconds'){sweep}; COMMIT",
            )
        except TenantUnavailable:
            # Limitation: the ACME middleware adds Replay-Nonce after the handler
            # and cannot take an error there, so while PostgreSQL is away this
            # hands out a nonce nobody recorded; the client's next request gets
            # badNonce with a fresh one. A middleware that renders errors from
            # the nonce step as 503 would end this.
            logger.warning("nonce not recorded: the store is unavailable")
        return nonce

    async def redeem(self, nonce: str) -> bool:
        """True exactly once for a nonce issued here (by any replica) and not yet expired.

        :raises TenantUnavailable: PostgreSQL cannot be reached.
        """
        if not _NONCE.match(nonce):
            return False
        binding = await self._source.binding(self._tenant_id)
        status = await self._send(
            binding,
            f"{binding.context_statement};"
            f" DELETE FROM nonces WHERE value = '{nonce}' AND expires > now()",
        )
        return row_count(status) == 1

    async def _send(self, binding: Binding, script: str) -> str:
        with translated_errors(f"nonces of {self._tenant_id}"):
            return await run_script(binding.pool, script)
