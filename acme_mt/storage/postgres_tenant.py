"""One tenant's ACME state (RFC 8555 §7.1) in its PostgreSQL schema.

Implements ``TenantStore`` from ``acme_mt.storage.base`` exactly as the SQLite
store does (the contract suite runs on both). The object is thin: a binding
(pool, schema, tenant id) shared with nothing but its tenant's nonces, so a
thousand tenants cost a thousand small objects and no connections of their
own. Every call is one transaction in the tenant's row-level security context
(``acme_mt.storage.postgres_db``); writes append the caller's audit entries to
the tenant's chain in that same transaction, and a write that changes nothing
appends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from acme_mt.models import (
    AuditEntry,
    Authorization,
    CertificateRecord,
    Challenge,
    Identifier,
    Order,
    OrderStatus,
    utcnow,
)
from acme_mt.storage.base import OcspResponseRecord, OcspSignerRecord, check_issuance_start
from acme_mt.storage.postgres_accounts import TenantStoreBase
from acme_mt.storage.postgres_db import Conn, NothingChanged, row_count
from acme_mt.storage.postgres_rows import (
    CERTIFICATE_COLUMNS,
    authorization_from_rows,
    aware,
    certificate_from_row,
    challenge_from_row,
    ocsp_response_from_row,
    order_from_row,
    to_json_or_none,
)
from acme_mt.storage.postgres_writes import (
    DONE,
    FUNCTIONS_SCHEMA,
    Chain,
    authorization_arrays,
    insert_chain,
    lock_audit_head,
    new_order_values,
    order_row_values,
)

logger = logging.getLogger(__name__)

_OCSP_RESPONSE_COLUMNS = "serial, der, this_update, next_update, not_after, revoked, stored_at"

# The reads of the ACME request path, one round trip each (functions/0004_entity_reads.sql).
_ORDER_BY_ID = f"SELECT * FROM {FUNCTIONS_SCHEMA}.order_by_id($1, $2, $3)"
_AUTHORIZATION_BY = (
    f"SELECT * FROM {FUNCTIONS_SCHEMA}.authorization_by($1, $2, $3, $4, $5, $6, $7, $8)"
)
_CHALLENGE_BY_ID = f"SELECT * FROM {FUNCTIONS_SCHEMA}.challenge_by_id($1, $2, $3)"
_CERTIFICATE_BY_SERIAL = f"SELECT * FROM {FUNCTIONS_SCHEMA}.certificate_by_serial($1, $2, $3)"
#: The reuse arguments of ``authorization_by`` when it reads by id.
_NOT_REUSE = (None, None, None, None, None)


class PostgresTenantStore(TenantStoreBase):
    """The store of one tenant, bound to its schema: no call reaches another tenant."""

    # Orders, authorizations and challenges (RFC 8555 §7.1.3 to §7.1.6).

    async def get_order(self, order_id: str) -> Order | None:
        rows = await self._read(_ORDER_BY_ID, (order_id,))
        return order_from_row(rows[0]) if rows else None

    async def find_order_replacing(self, cert_id: str) -> Order | None:
        """The newest order that is not invalid and names ``cert_id`` in ``replaces``."""
        order_id = await self._run(
            lambda conn: conn.fetchval(
                "SELECT id FROM orders WHERE replaces = $1 AND status <> 'invalid'"
                " ORDER BY created DESC, seq DESC LIMIT 1",
                cert_id,
            )
        )
        return None if order_id is None else await self.get_order(order_id)

    async def list_order_ids(self, account_id: str, limit: int, offset: int) -> list[str]:
        """The account's order ids, newest first (RFC 8555 §7.1.2.1)."""
        rows = await self._run(
            lambda conn: conn.fetch(
                "SELECT id FROM orders WHERE account_id = $1"
                " ORDER BY created DESC, seq DESC LIMIT $2 OFFSET $3",
                account_id,
                limit,
                offset,
            )
        )
        return [row["id"] for row in rows]

    async def create_order(
        self,
        order: Order,
        new_authorizations: Sequence[Authorization],
        audit: Sequence[AuditEntry] = (),
    ) -> None:
        """Insert an order, its new authorizations and its links, in the order's sequence.

        :raises acme_mt.errors.StoreError: a linked authorization is missing or
            belongs to another account.
        """

        values = (*new_order_values(order), *authorization_arrays(new_authorizations))
        await self._call("create_order", values, audit)

    async def update_order(self, order: Order, audit: Sequence[AuditEntry] = ()) -> None:
        await self._call("update_order", order_row_values(order), audit)

    async def get_authorization(self, authorization_id: str) -> Authorization | None:
        rows = await self._read(_AUTHORIZATION_BY, (authorization_id, *_NOT_REUSE))
        return authorization_from_rows(rows)

    async def get_challenge(self, challenge_id: str) -> Challenge | None:
        rows = await self._read(_CHALLENGE_BY_ID, (challenge_id,))
        return challenge_from_row(rows[0]) if rows else None

    async def find_reusable_authorization(
        self, account_id: str, identifier: Identifier, wildcard: bool, now: datetime
    ) -> Authorization | None:
        """The newest valid, unexpired authorization of this account for this identifier."""
        values = (None, account_id, identifier.type, identifier.value, wildcard, aware(now))
        return authorization_from_rows(await self._read(_AUTHORIZATION_BY, values))

    async def create_authorization(
        self, authorization: Authorization, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Insert an authorization and its challenges outside any order (RFC 8555 §7.4.1)."""
        await self._call("create_authorization", authorization_arrays([authorization]), audit)

    async def update_authorization(
        self, authorization: Authorization, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Store an authorization's status and expiry and the state of each challenge."""
        challenges = authorization.challenges
        values = (
            authorization.id,
            authorization.status,
            aware(authorization.expires),
            [c.id for c in challenges],
            [c.status for c in challenges],
            [c.validated for c in challenges],
            [to_json_or_none(c.error) for c in challenges],
        )
        await self._call("update_authorization", values, audit)

    # Certificates (RFC 8555 §7.4.2 and §7.6, RFC 7030 §4.2).

    async def get_certificate(self, serial: str) -> CertificateRecord | None:
        rows = await self._read(_CERTIFICATE_BY_SERIAL, (serial.lower(),))
        return certificate_from_row(rows[0]) if rows else None

    async def list_revoked_certificates(self, shard: int | None) -> list[CertificateRecord]:
        """Revoked certificates not yet expired, by serial; the records carry no DER."""
        columns = CERTIFICATE_COLUMNS.replace("der,", "NULL::bytea AS der,")
        query = (
            f"SELECT {columns} FROM certificates WHERE status = 'revoked' AND not_after > $1"
            " AND ($2::integer IS NULL OR shard = $2) ORDER BY serial"
        )
        rows = await self._run(lambda conn: conn.fetch(query, utcnow(), shard))
        return [certificate_from_row(row) for row in rows]

    async def list_certificates(self, after_serial: str, limit: int) -> list[CertificateRecord]:
        """Valid and revoked certificates by serial text after ``after_serial``, without DER."""
        columns = CERTIFICATE_COLUMNS.replace("der,", "NULL::bytea AS der,")
        query = (
            f"SELECT {columns} FROM certificates WHERE status IN ('valid', 'revoked')"
            " AND serial > $1 ORDER BY serial LIMIT $2"
        )
        rows = await self._run(lambda conn: conn.fetch(query, after_serial.lower(), limit))
        return [certificate_from_row(row) for row in rows]

    # Delegated OCSP signers (RFC 6960 §4.2.2.2).

    async def get_ocsp_signer(self) -> OcspSignerRecord | None:
        row = await self._run(
            lambda conn: conn.fetchrow(
                "SELECT key_label, certificate, not_after, created FROM ocsp_signers"
                " ORDER BY not_after DESC, created DESC LIMIT 1"
            )
        )
        if row is None:
            return None
        return OcspSignerRecord(
            key_label=row["key_label"],
            certificate_der=bytes(row["certificate"]),
            not_after=row["not_after"],
            created=row["created"],
        )

    async def save_ocsp_signer(
        self, signer: OcspSignerRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """:raises acme_mt.errors.Conflict: the key label is saved already."""

        async def body(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO ocsp_signers (key_label, certificate, not_after, created)"
                " VALUES ($1, $2, $3, $4)",
                signer.key_label,
                signer.certificate_der,
                aware(signer.not_after),
                aware(signer.created),
            )

        await self._write(body, audit)

    # Shared OCSP responses and job leases.

    async def save_ocsp_responses(self, responses: Sequence[OcspResponseRecord]) -> None:
        rows = [
            (
                r.serial.lower(),
                r.der,
                aware(r.this_update),
                aware(r.next_update),
                aware(r.not_after),
                r.revoked,
            )
            for r in responses
        ]

        async def body(conn: Conn) -> None:
            await conn.executemany(_UPSERT_OCSP_RESPONSE, rows)

        if rows:
            await self._run(body)

    async def list_ocsp_responses(
        self, stored_since: datetime, limit: int
    ) -> list[OcspResponseRecord]:
        query = (
            f"SELECT {_OCSP_RESPONSE_COLUMNS}"
            " FROM ocsp_responses WHERE stored_at >= $1 AND not_after > $2"
            " ORDER BY stored_at LIMIT $3"
        )
        since = aware(stored_since)
        rows = await self._run(lambda conn: conn.fetch(query, since, utcnow(), limit))
        return [ocsp_response_from_row(row) for row in rows]

    async def get_ocsp_response(self, serial: str) -> OcspResponseRecord | None:
        query = (
            f"SELECT {_OCSP_RESPONSE_COLUMNS} FROM ocsp_responses"
            " WHERE serial = $1 AND not_after > $2"
        )
        row = await self._run(lambda conn: conn.fetchrow(query, serial.lower(), utcnow()))
        return None if row is None else ocsp_response_from_row(row)

    async def claim_job(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        query = (
            "INSERT INTO job_leases (name, holder, until) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
            " WHERE job_leases.holder = excluded.holder OR job_leases.until <= $4"
            " RETURNING holder"
        )
        held = await self._run(
            lambda conn: conn.fetchval(query, name, holder, aware(until), aware(now))
        )
        return bool(held == holder)

    # Issuance.

    async def begin_issuance(
        self,
        order: Order,
        certificate: CertificateRecord,
        audit: Sequence[AuditEntry] = (),
        *,
        from_status: str = OrderStatus.READY,
    ) -> bool:
        """Move a ready order to processing and record its serial as pending, or do nothing."""
        check_issuance_start(from_status)
        await self._liveness.hold()
        values = (order.id, from_status, *self._pending_values(certificate))
        return await self._call("begin_issuance", values, audit) == DONE

    async def complete_issuance(
        self, order: Order | None, certificate: CertificateRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Store the signed DER of a recorded serial, and the order's final state if given.

        :raises acme_mt.errors.StoreError: the serial was never recorded, or is
            valid or revoked already.
        """

        values = (
            certificate.serial.lower(),
            certificate.der,
            aware(certificate.not_before),
            aware(certificate.not_after),
            *order_row_values(order),
        )
        await self._call("complete_issuance", values, audit)

    async def abandon_issuance(
        self, order: Order | None, serial: str, audit: Sequence[AuditEntry] = ()
    ) -> None:
        values = (serial.lower(), *order_row_values(order))
        await self._call("abandon_issuance", values, audit)

    async def recover_interrupted_issuance(self) -> int:
        """Abandon pending serials of dead processes and make their orders ready again.

        Safe while other replicas issue: a serial stays pending while the
        process that recorded it holds its liveness lock. Returns how many
        serials were abandoned, audited as ``issuance.recovered``.
        """

        async def body(conn: Conn) -> tuple[int, Chain | None]:
            seq, digest = await lock_audit_head(conn)
            pending = await conn.fetch(
                "SELECT serial, issuer_instance FROM certificates WHERE status = 'pending'"
                " ORDER BY serial FOR UPDATE"
            )
            owners = {row["issuer_instance"] for row in pending} - {None}
            dead = await self._liveness.dead(owners) if owners else set()
            serials = [
                row["serial"]
                for row in pending
                if row["issuer_instance"] is None or row["issuer_instance"] in dead
            ]
            await conn.execute(
                "UPDATE certificates SET status = 'abandoned' WHERE serial = ANY($1::text[])",
                serials,
            )
            ready = await conn.execute(
                "UPDATE orders SET status = 'ready', certificate_serial = NULL"
                " WHERE status = 'processing' AND NOT EXISTS (SELECT 1 FROM certificates c"
                " WHERE c.serial = orders.certificate_serial AND c.status <> 'abandoned')"
            )
            if not serials and row_count(ready) == 0:
                raise NothingChanged((0, None))
            data = {"abandoned_serials": serials, "orders_made_ready": row_count(ready)}
            chain = Chain.after(seq, digest, [AuditEntry("issuance.recovered", data)])
            await insert_chain(conn, chain)
            logger.info("abandoned %d interrupted issuances", len(serials))
            return len(serials), chain

        head = self._binding.head
        async with head.lock:
            abandoned, chain = await self._run(body)
            if chain is not None:
                head.learn(*chain.last)
        return abandoned

    def _pending_values(self, certificate: CertificateRecord) -> tuple[Any, ...]:
        """A serial about to be signed, naming this process as its signer."""
        return (
            certificate.serial.lower(),
            certificate.account_id,
            certificate.order_id,
            aware(certificate.not_before),
            aware(certificate.not_after),
            aware(certificate.created),
            certificate.shard,
            certificate.channel,
            self._liveness.instance,
        )

    async def insert_certificate(
        self, certificate: CertificateRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Record a pending serial outside an ACME order; ``complete_issuance`` finishes it.

        :raises acme_mt.errors.Conflict: the serial exists already.
        """
        await self._liveness.hold()
        values = (None, *self._pending_values(certificate))
        await self._call("record_pending_certificate", values, audit)

    async def revoke_certificate(
        self, serial: str, reason: int, when: datetime, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        values = (serial.lower(), aware(when), reason)
        return await self._call("revoke_certificate", values, audit) == DONE


#: Keeps the later response for a serial, and never a good one over a revoked one;
#: stored_at from this server's clock, which every replica shares.
_UPSERT_OCSP_RESPONSE = (
    "INSERT INTO ocsp_responses"
    " (serial, der, this_update, next_update, not_after, revoked, stored_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())"
    " ON CONFLICT (serial) DO UPDATE SET der = excluded.der,"
    " this_update = excluded.this_update, next_update = excluded.next_update,"
    " not_after = excluded.not_after, revoked = excluded.revoked, stored_at = excluded.stored_at"
    " WHERE excluded.this_update >= ocsp_responses.this_update"
    " AND (excluded.revoked OR NOT ocsp_responses.revoked)"
)
