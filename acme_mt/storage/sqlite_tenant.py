"""One tenant's ACME state (RFC 8555 §7.1) in a SQLite file of its own.

Implements ``TenantStore`` from ``acme_mt.storage.base``. Every write is one
transaction that also appends the caller's audit entries to the tenant's hash
chain (``acme_mt.audit``); a write that changes nothing (an order no longer
ready, a certificate already revoked, an account that exists) appends nothing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from acme_mt.errors import Conflict, StoreError
from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    CertificateRecord,
    CertificateStatus,
    Challenge,
    EabKey,
    Identifier,
    Order,
    OrderStatus,
    VerifiedDomain,
    utcnow,
)
from acme_mt.storage.base import (
    AuditRecord,
    EstCredential,
    OcspResponseRecord,
    OcspSignerRecord,
    check_issuance_start,
)
from acme_mt.storage.sqlite_db import NothingChanged, SqliteDatabase
from acme_mt.storage.sqlite_liveness import FileLiveness
from acme_mt.storage.sqlite_rows import (
    account_from_row,
    account_to_row,
    append_audit,
    audit_from_row,
    authorization_to_row,
    authorization_with_challenges,
    certificate_from_row,
    certificate_to_row,
    challenge_from_row,
    challenge_to_row,
    eab_key_from_row,
    eab_key_to_row,
    from_epoch,
    from_epoch_or_none,
    insert,
    insert_authorization,
    insert_pending_certificate,
    ocsp_response_from_row,
    order_from_rows,
    order_to_row,
    require_row,
    to_epoch,
    to_epoch_or_none,
    update_order_row,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Conn = sqlite3.Connection


class SqliteTenantStore:
    """The store of one tenant, bound to its own file: no call reaches another tenant."""

    def __init__(
        self, tenant_id: str, slug: str, db: SqliteDatabase, liveness: FileLiveness
    ) -> None:
        self.tenant_id = tenant_id
        self.slug = slug
        self._db = db
        self._liveness = liveness

    async def _write(self, body: Callable[[Conn], T], audit: Sequence[AuditEntry]) -> T:
        """Run ``body`` and append ``audit`` in one transaction."""

        def run(conn: Conn) -> T:
            result = body(conn)
            append_audit(conn, audit)
            return result

        return await self._db.write(run)

    def _hold_liveness(self) -> None:
        """Hold this process's lock file before a pending serial names it."""
        try:
            self._liveness.hold()
        except OSError as exc:
            logger.error("tenant %s: liveness lock unavailable: %s", self.slug, exc.strerror)
            raise StoreError("the liveness lock cannot be taken") from None

    async def _read_one(self, query: str, key: str) -> sqlite3.Row | None:
        rows = await self._db.query(query, (key,))
        return rows[0] if rows else None

    # Accounts and EAB keys (RFC 8555 §7.3).

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._read_one("SELECT * FROM accounts WHERE id = ?", account_id)
        return None if row is None else account_from_row(row)

    async def get_account_by_thumbprint(self, thumbprint: str) -> Account | None:
        row = await self._read_one("SELECT * FROM accounts WHERE thumbprint = ?", thumbprint)
        return None if row is None else account_from_row(row)

    async def create_account(self, account: Account, audit: Sequence[AuditEntry] = ()) -> Account:
        """Insert an account and bind its EAB key, or return the account that has its key."""

        def body(conn: Conn) -> Account:
            rows = conn.execute(
                "SELECT * FROM accounts WHERE thumbprint = ?", (account.thumbprint,)
            ).fetchall()
            if rows:
                raise NothingChanged(account_from_row(rows[0]))
            if account.eab_kid is not None:
                _check_eab_unbound(conn, account.eab_kid)
            insert(conn, "accounts", account_to_row(account))
            if account.eab_kid is not None:
                conn.execute(
                    "UPDATE eab_keys SET account_id = COALESCE(account_id, ?) WHERE kid = ?",
                    (account.id, account.eab_kid),
                )
            return account

        return await self._write(body, audit)

    async def update_account(self, account: Account, audit: Sequence[AuditEntry] = ()) -> None:
        """Store an account's key, status and contacts (its EAB binding never changes)."""

        def body(conn: Conn) -> None:
            cursor = conn.execute(
                "UPDATE accounts SET thumbprint = :thumbprint, jwk = :jwk, status = :status,"
                " contact = :contact WHERE id = :id",
                account_to_row(account),
            )
            require_row(cursor, "account")

        await self._write(body, audit)

    async def get_eab_key(self, kid: str) -> EabKey | None:
        row = await self._read_one("SELECT * FROM eab_keys WHERE kid = ?", kid)
        return None if row is None else eab_key_from_row(row)

    async def list_eab_keys(self) -> list[EabKey]:
        def body(conn: Conn) -> list[EabKey]:
            rows = conn.execute("SELECT * FROM eab_keys ORDER BY created, kid").fetchall()
            return [eab_key_from_row(row) for row in rows]

        return await self._db.read(body)

    async def list_domains(self) -> list[VerifiedDomain]:
        def body(conn: Conn) -> list[VerifiedDomain]:
            rows = conn.execute("SELECT * FROM verified_domains ORDER BY domain").fetchall()
            return [
                VerifiedDomain(
                    domain=row["domain"],
                    token=row["token"],
                    requested=from_epoch(row["requested"]),
                    verified=None if row["verified"] is None else from_epoch(row["verified"]),
                )
                for row in rows
            ]

        return await self._db.read(body)

    async def save_domain(self, domain: VerifiedDomain, audit: Sequence[AuditEntry] = ()) -> None:
        def body(conn: Conn) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO verified_domains (domain, token, requested, verified)"
                " VALUES (?, ?, ?, ?)",
                (
                    domain.domain,
                    domain.token,
                    to_epoch(domain.requested),
                    None if domain.verified is None else to_epoch(domain.verified),
                ),
            )

        await self._write(body, audit)

    async def revoke_eab_key(self, kid: str, audit: Sequence[AuditEntry] = ()) -> bool:
        """Stop an EAB key binding new accounts; accounts bound already keep working."""

        def body(conn: Conn) -> bool:
            cursor = conn.execute(
                "UPDATE eab_keys SET revoked = 1 WHERE kid = ? AND revoked = 0", (kid,)
            )
            if cursor.rowcount == 0:
                raise NothingChanged(False)
            return True

        return await self._write(body, audit)

    async def create_eab_key(self, key: EabKey, audit: Sequence[AuditEntry] = ()) -> None:
        await self._write(lambda conn: insert(conn, "eab_keys", eab_key_to_row(key)), audit)

    # EST enrollment credentials (RFC 7030 §3.2.3).

    async def get_est_credential(self, username: str) -> EstCredential | None:
        row = await self._read_one("SELECT * FROM est_credentials WHERE username = ?", username)
        return None if row is None else _est_credential_from_row(row)

    async def create_est_credential(
        self, credential: EstCredential, audit: Sequence[AuditEntry] = ()
    ) -> None:
        row = {
            "id": credential.id,
            "username": credential.username,
            "password_hash": credential.password_hash,
            "created": to_epoch(credential.created),
            "revoked_at": to_epoch_or_none(credential.revoked_at),
        }
        await self._write(lambda conn: insert(conn, "est_credentials", row), audit)

    async def revoke_est_credential(
        self, credential_id: str, when: datetime, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        def body(conn: Conn) -> bool:
            cursor = conn.execute(
                "UPDATE est_credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (to_epoch(when), credential_id),
            )
            if cursor.rowcount == 0:
                raise NothingChanged(False)
            return True

        return await self._write(body, audit)

    # Orders, authorizations and challenges (RFC 8555 §7.1.3 to §7.1.6).

    async def get_order(self, order_id: str) -> Order | None:
        def body(conn: Conn) -> Order | None:
            rows = conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchall()
            if not rows:
                return None
            links = conn.execute(
                "SELECT authorization_id FROM order_authorizations WHERE order_id = ?"
                " ORDER BY position",
                (order_id,),
            ).fetchall()
            return order_from_rows(rows[0], links)

        return await self._db.read(body)

    async def find_order_replacing(self, cert_id: str) -> Order | None:
        """The newest order that is not invalid and names ``cert_id`` in ``replaces``."""
        row = await self._read_one(
            "SELECT id FROM orders WHERE replaces = ? AND status != 'invalid'"
            " ORDER BY created DESC LIMIT 1",
            cert_id,
        )
        return None if row is None else await self.get_order(row["id"])

    async def list_order_ids(self, account_id: str, limit: int, offset: int) -> list[str]:
        """The account's order ids, newest first (RFC 8555 §7.1.2.1)."""

        def body(conn: Conn) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM orders WHERE account_id = ?"
                " ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                (account_id, limit, offset),
            ).fetchall()
            return [row["id"] for row in rows]

        return await self._db.read(body)

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

        def body(conn: Conn) -> None:
            insert(conn, "orders", order_to_row(order))
            for authorization in new_authorizations:
                insert_authorization(conn, authorization)
            for position, authorization_id in enumerate(order.authorization_ids):
                cursor = conn.execute(
                    "INSERT INTO order_authorizations (order_id, authorization_id, position)"
                    " SELECT ?, id, ? FROM authorizations WHERE id = ? AND account_id = ?",
                    (order.id, position, authorization_id, order.account_id),
                )
                if cursor.rowcount != 1:
                    raise StoreError("an order may link only its account's authorizations")

        await self._write(body, audit)

    async def update_order(self, order: Order, audit: Sequence[AuditEntry] = ()) -> None:
        await self._write(lambda conn: update_order_row(conn, order), audit)

    async def get_authorization(self, authorization_id: str) -> Authorization | None:
        def body(conn: Conn) -> Authorization | None:
            rows = conn.execute(
                "SELECT * FROM authorizations WHERE id = ?", (authorization_id,)
            ).fetchall()
            return authorization_with_challenges(conn, rows[0]) if rows else None

        return await self._db.read(body)

    async def get_challenge(self, challenge_id: str) -> Challenge | None:
        row = await self._read_one("SELECT * FROM challenges WHERE id = ?", challenge_id)
        return None if row is None else challenge_from_row(row)

    async def find_reusable_authorization(
        self, account_id: str, identifier: Identifier, wildcard: bool, now: datetime
    ) -> Authorization | None:
        """The newest valid, unexpired authorization of this account for this identifier."""

        def body(conn: Conn) -> Authorization | None:
            rows = conn.execute(
                "SELECT * FROM authorizations WHERE account_id = ? AND identifier_type = ?"
                " AND identifier_value = ? AND wildcard = ? AND status = 'valid'"
                " AND expires > ? ORDER BY created DESC, rowid DESC LIMIT 1",
                (account_id, identifier.type, identifier.value, int(wildcard), to_epoch(now)),
            ).fetchall()
            return authorization_with_challenges(conn, rows[0]) if rows else None

        return await self._db.read(body)

    async def create_authorization(
        self, authorization: Authorization, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Insert an authorization and its challenges outside any order (RFC 8555 §7.4.1)."""
        await self._write(lambda conn: insert_authorization(conn, authorization), audit)

    async def update_authorization(
        self, authorization: Authorization, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Store an authorization's status and expiry and the state of each challenge."""

        def body(conn: Conn) -> None:
            cursor = conn.execute(
                "UPDATE authorizations SET status = :status, expires = :expires WHERE id = :id",
                authorization_to_row(authorization),
            )
            require_row(cursor, "authorization")
            for position, challenge in enumerate(authorization.challenges):
                cursor = conn.execute(
                    "UPDATE challenges SET status = :status, validated = :validated,"
                    " error = :error WHERE id = :id AND authorization_id = :authorization_id",
                    challenge_to_row(challenge, position),
                )
                require_row(cursor, "challenge")

        await self._write(body, audit)

    # Certificates (RFC 8555 §7.4.2 and §7.6, RFC 7030 §4.2).

    async def get_certificate(self, serial: str) -> CertificateRecord | None:
        row = await self._read_one("SELECT * FROM certificates WHERE serial = ?", serial.lower())
        return None if row is None else certificate_from_row(row)

    async def list_revoked_certificates(self, shard: int | None) -> list[CertificateRecord]:
        """Revoked certificates not yet expired, by serial; the records carry no DER."""
        query = (
            "SELECT serial, account_id, order_id, status, not_before, not_after, created,"
            " NULL AS der, revoked_at, revocation_reason, shard, channel FROM certificates"
            " WHERE status = 'revoked' AND not_after > ?"
        )
        args: tuple[int, ...] = (to_epoch(utcnow()),)
        if shard is not None:
            query += " AND shard = ?"
            args += (shard,)

        def body(conn: Conn) -> list[CertificateRecord]:
            rows = conn.execute(query + " ORDER BY serial", args).fetchall()
            return [certificate_from_row(row) for row in rows]

        return await self._db.read(body)

    async def list_certificates(self, after_serial: str, limit: int) -> list[CertificateRecord]:
        """Valid and revoked certificates by serial text after ``after_serial``, without DER."""

        def body(conn: Conn) -> list[CertificateRecord]:
            rows = conn.execute(
                "SELECT serial, account_id, order_id, status, not_before, not_after, created,"
                " NULL AS der, revoked_at, revocation_reason, shard, channel FROM certificates"
                " WHERE status IN ('valid', 'revoked') AND serial > ? ORDER BY serial LIMIT ?",
                (after_serial.lower(), limit),
            ).fetchall()
            return [certificate_from_row(row) for row in rows]

        return await self._db.read(body)

    # Delegated OCSP signers (RFC 6960 §4.2.2.2).

    async def get_ocsp_signer(self) -> OcspSignerRecord | None:
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM ocsp_signers ORDER BY not_after DESC, created DESC LIMIT 1"
            ).fetchall()
        )
        if not rows:
            return None
        row = rows[0]
        return OcspSignerRecord(
            key_label=row["key_label"],
            certificate_der=bytes(row["certificate"]),
            not_after=from_epoch(row["not_after"]),
            created=from_epoch(row["created"]),
        )

    async def save_ocsp_signer(
        self, signer: OcspSignerRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """:raises acme_mt.errors.Conflict: the key label is saved already."""
        row = {
            "key_label": signer.key_label,
            "certificate": signer.certificate_der,
            "not_after": to_epoch(signer.not_after),
            "created": to_epoch(signer.created),
        }
        await self._write(lambda conn: insert(conn, "ocsp_signers", row), audit)

    # Shared OCSP responses and job leases.

    async def save_ocsp_responses(self, responses: Sequence[OcspResponseRecord]) -> None:
        stored_at = _microseconds(datetime.now(UTC))
        rows = [
            (
                r.serial.lower(),
                r.der,
                to_epoch(r.this_update),
                to_epoch(r.next_update),
                to_epoch(r.not_after),
                int(r.revoked),
                stored_at,
            )
            for r in responses
        ]

        def body(conn: Conn) -> None:
            conn.executemany(_UPSERT_OCSP_RESPONSE, rows)

        if rows:
            await self._write(body, ())

    async def list_ocsp_responses(
        self, stored_since: datetime, limit: int
    ) -> list[OcspResponseRecord]:
        rows = await self._db.query(
            "SELECT * FROM ocsp_responses WHERE stored_at >= ? AND not_after > ?"
            " ORDER BY stored_at LIMIT ?",
            (_microseconds(stored_since), to_epoch(utcnow()), limit),
        )
        return [ocsp_response_from_row(row) for row in rows]

    async def get_ocsp_response(self, serial: str) -> OcspResponseRecord | None:
        rows = await self._db.query(
            "SELECT * FROM ocsp_responses WHERE serial = ? AND not_after > ?",
            (serial.lower(), to_epoch(utcnow())),
        )
        return ocsp_response_from_row(rows[0]) if rows else None

    async def claim_job(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        def body(conn: Conn) -> bool:
            cursor = conn.execute(
                "INSERT INTO job_leases (name, holder, until) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " until = excluded.until"
                " WHERE job_leases.holder = excluded.holder OR job_leases.until <= ?",
                (name, holder, _microseconds(until), _microseconds(now)),
            )
            return cursor.rowcount > 0

        return await self._write(body, ())

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
        self._hold_liveness()
        instance = self._liveness.instance

        def body(conn: Conn) -> bool:
            cursor = conn.execute(
                "UPDATE orders SET status = 'processing', certificate_serial = ?"
                " WHERE id = ? AND status = ?",
                (certificate.serial.lower(), order.id, from_status),
            )
            if cursor.rowcount == 0:
                raise NothingChanged(False)
            insert_pending_certificate(conn, certificate, instance)
            return True

        return await self._write(body, audit)

    async def complete_issuance(
        self, order: Order | None, certificate: CertificateRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Store the signed DER of a recorded serial, and the order's final state if given.

        :raises acme_mt.errors.StoreError: the serial was never recorded, or is
            valid or revoked already.
        """

        def body(conn: Conn) -> None:
            cursor = conn.execute(
                "UPDATE certificates SET der = :der, status = 'valid', not_before = :not_before,"
                " not_after = :not_after WHERE serial = :serial"
                " AND status IN ('pending', 'abandoned')",
                certificate_to_row(certificate),
            )
            require_row(cursor, "pending certificate")
            if order is not None:
                update_order_row(conn, order)

        await self._write(body, audit)

    async def abandon_issuance(
        self, order: Order | None, serial: str, audit: Sequence[AuditEntry] = ()
    ) -> None:
        def body(conn: Conn) -> None:
            conn.execute(
                "UPDATE certificates SET status = 'abandoned' WHERE serial = ? AND status = ?",
                (serial.lower(), CertificateStatus.PENDING),
            )
            if order is not None:
                update_order_row(conn, order)

        await self._write(body, audit)

    async def recover_interrupted_issuance(self) -> int:
        """Abandon pending serials of dead processes and make their orders ready again.

        Safe while other worker processes issue from the same file: a serial
        stays pending while the process that recorded it holds its lock file.
        Returns how many serials were abandoned, audited as ``issuance.recovered``.
        """

        def body(conn: Conn) -> int:
            rows = conn.execute(
                "SELECT serial, issuer_instance FROM certificates WHERE status = 'pending'"
                " ORDER BY serial"
            ).fetchall()
            owners = {row["issuer_instance"] for row in rows} - {None}
            dead = self._liveness.dead(owners) if owners else set()
            pending = [
                row
                for row in rows
                if row["issuer_instance"] is None or row["issuer_instance"] in dead
            ]
            conn.executemany(
                "UPDATE certificates SET status = 'abandoned' WHERE serial = ?",
                [(row["serial"],) for row in pending],
            )
            cursor = conn.execute(
                "UPDATE orders SET status = 'ready', certificate_serial = NULL"
                " WHERE status = 'processing' AND NOT EXISTS (SELECT 1 FROM certificates c"
                " WHERE c.serial = orders.certificate_serial AND c.status <> 'abandoned')"
            )
            if not pending and cursor.rowcount == 0:
                raise NothingChanged(0)
            serials = [row["serial"] for row in pending]
            data = {"abandoned_serials": serials, "orders_made_ready": cursor.rowcount}
            append_audit(conn, [AuditEntry("issuance.recovered", data)])
            logger.info("abandoned %d interrupted issuances", len(serials))
            return len(serials)

        return await self._db.write(body)

    async def insert_certificate(
        self, certificate: CertificateRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Record a pending serial outside an ACME order; ``complete_issuance`` finishes it.

        :raises acme_mt.errors.Conflict: the serial exists already.
        """
        self._hold_liveness()
        instance = self._liveness.instance
        await self._write(
            lambda conn: insert_pending_certificate(conn, certificate, instance), audit
        )

    async def revoke_certificate(
        self, serial: str, reason: int, when: datetime, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        def body(conn: Conn) -> bool:
            cursor = conn.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = ?,"
                " revocation_reason = ? WHERE serial = ? AND status = 'valid'",
                (to_epoch(when), reason, serial.lower()),
            )
            if cursor.rowcount == 0:
                raise NothingChanged(False)
            return True

        return await self._write(body, audit)

    # The audit chain.

    async def append_audit(self, audit: Sequence[AuditEntry]) -> None:
        await self._write(lambda conn: None, audit)

    async def list_audit(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        def body(conn: Conn) -> list[AuditRecord]:
            rows = conn.execute(
                "SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
            return [audit_from_row(row) for row in rows]

        return await self._db.read(body)

    async def close(self) -> None:
        await self._db.close()


def _check_eab_unbound(conn: Conn, kid: str) -> None:
    """RFC 8555 §7.3.4: an EAB key binds as many accounts as its policy allows (one by
    default); a revoked or expired key binds none."""
    rows = conn.execute("SELECT * FROM eab_keys WHERE kid = ?", (kid,)).fetchall()
    if not rows:
        raise Conflict("the external account key is unknown")
    key = eab_key_from_row(rows[0])
    if not key.usable(utcnow()):
        raise Conflict("the external account key is revoked or expired")
    (bound,) = conn.execute("SELECT COUNT(*) FROM accounts WHERE eab_kid = ?", (kid,)).fetchone()
    if key.account_id is not None and bound == 0:
        bound = 1
    if bound >= key.policy.max_accounts:
        raise Conflict("the external account key is bound to its accounts already")


def _est_credential_from_row(row: sqlite3.Row) -> EstCredential:
    return EstCredential(
        id=row["id"],
        username=row["username"],
        password_hash=row["password_hash"],
        created=from_epoch(row["created"]),
        revoked_at=from_epoch_or_none(row["revoked_at"]),
    )


#: Keeps the later response for a serial, and never a good one over a revoked one.
_UPSERT_OCSP_RESPONSE = (
    "INSERT INTO ocsp_responses"
    " (serial, der, this_update, next_update, not_after, revoked, stored_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (serial) DO UPDATE SET der = excluded.der,"
    " this_update = excluded.this_update, next_update = excluded.next_update,"
    " not_after = excluded.not_after, revoked = excluded.revoked, stored_at = excluded.stored_at"
    " WHERE excluded.this_update >= ocsp_responses.this_update"
    " AND (excluded.revoked OR NOT ocsp_responses.revoked)"
)


def _microseconds(moment: datetime) -> int:
    """A time as integer microseconds since the epoch, for ordering what changed."""
    return round(moment.timestamp() * 1_000_000)
