"""How the SQLite stores turn models into rows and rows back into models.

Times are whole seconds since the epoch (UTC) in integer columns and come back
as timezone-aware UTC datetimes; JSON columns hold compact text with sorted keys;
certificate serials are lowercase hex. A ``*_to_row`` function returns the
named parameters of its table, column by column; the helpers at the end write
the rows of one object and run inside the caller's transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from acme_mt.audit import GENESIS_HASH, chain_hash
from acme_mt.errors import StoreError
from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    CertificateRecord,
    CertificateStatus,
    Challenge,
    EabKey,
    EabPolicy,
    Identifier,
    Order,
    utcnow,
)
from acme_mt.storage.base import AuditRecord, OcspResponseRecord, TenantRecord

Row = sqlite3.Row


def to_epoch(moment: datetime) -> int:
    """Whole seconds since the epoch of a timezone-aware time.

    :raises ValueError: the time is naive, so its instant is unknown.
    """
    if moment.tzinfo is None:
        raise ValueError("the store keeps timezone-aware times only")
    return int(moment.timestamp())


def to_epoch_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else to_epoch(moment)


def from_epoch(seconds: int) -> datetime:
    """A stored time as a timezone-aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def from_epoch_or_none(seconds: int | None) -> datetime | None:
    return None if seconds is None else from_epoch(seconds)


def to_json(value: Any) -> str:
    """Compact JSON text for a JSON column."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def to_json_or_none(value: Any) -> str | None:
    return None if value is None else to_json(value)


def from_json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    """Insert one row given as named parameters; ``table`` is a name fixed in code."""
    columns = ", ".join(row)
    values = ", ".join(f":{name}" for name in row)
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", row)


def account_to_row(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "thumbprint": account.thumbprint,
        "jwk": to_json(account.jwk),
        "status": account.status,
        "contact": to_json(list(account.contact)),
        "created": to_epoch(account.created),
        "eab_kid": account.eab_kid,
    }


def account_from_row(row: Row) -> Account:
    return Account(
        id=row["id"],
        jwk=json.loads(row["jwk"]),
        thumbprint=row["thumbprint"],
        status=row["status"],
        contact=tuple(json.loads(row["contact"])),
        created=from_epoch(row["created"]),
        eab_kid=row["eab_kid"],
    )


def eab_key_to_row(key: EabKey) -> dict[str, Any]:
    return {
        "kid": key.kid,
        "hmac_key": key.hmac_key,
        "created": to_epoch(key.created),
        "account_id": key.account_id,
        "revoked": int(key.revoked),
        "policy": json.dumps(key.policy.to_json()),
    }


def eab_key_from_row(row: Row) -> EabKey:
    return EabKey(
        kid=row["kid"],
        hmac_key=bytes(row["hmac_key"]),
        created=from_epoch(row["created"]),
        account_id=row["account_id"],
        revoked=bool(row["revoked"]),
        policy=EabPolicy.from_json(json.loads(row["policy"]) if row["policy"] else None),
    )


def order_to_row(order: Order) -> dict[str, Any]:
    """The order's own columns; its authorization links live in ``order_authorizations``."""
    serial = order.certificate_serial
    return {
        "id": order.id,
        "account_id": order.account_id,
        "status": order.status,
        "identifiers": to_json([i.to_json() for i in order.identifiers]),
        "expires": to_epoch(order.expires),
        "created": to_epoch(order.created),
        "not_before": to_epoch_or_none(order.not_before),
        "not_after": to_epoch_or_none(order.not_after),
        "error": to_json_or_none(order.error),
        "certificate_serial": None if serial is None else serial.lower(),
        "profile": order.profile,
        "replaces": order.replaces,
    }


def order_from_rows(row: Row, links: Sequence[Row]) -> Order:
    """An order from its row and its authorization links in position order."""
    identifiers = json.loads(row["identifiers"])
    return Order(
        id=row["id"],
        account_id=row["account_id"],
        status=row["status"],
        identifiers=tuple(Identifier(i["type"], i["value"]) for i in identifiers),
        authorization_ids=tuple(link["authorization_id"] for link in links),
        expires=from_epoch(row["expires"]),
        created=from_epoch(row["created"]),
        not_before=from_epoch_or_none(row["not_before"]),
        not_after=from_epoch_or_none(row["not_after"]),
        error=from_json_or_none(row["error"]),
        certificate_serial=row["certificate_serial"],
        profile=row["profile"],
        replaces=row["replaces"],
    )


def challenge_to_row(challenge: Challenge, position: int) -> dict[str, Any]:
    return {
        "id": challenge.id,
        "authorization_id": challenge.authorization_id,
        "position": position,
        "type": challenge.type,
        "token": challenge.token,
        "status": challenge.status,
        "validated": to_epoch_or_none(challenge.validated),
        "error": to_json_or_none(challenge.error),
    }


def challenge_from_row(row: Row) -> Challenge:
    return Challenge(
        id=row["id"],
        authorization_id=row["authorization_id"],
        type=row["type"],
        token=row["token"],
        status=row["status"],
        validated=from_epoch_or_none(row["validated"]),
        error=from_json_or_none(row["error"]),
    )


def authorization_to_row(authorization: Authorization) -> dict[str, Any]:
    """The authorization's own columns; its challenges are rows of ``challenges``."""
    return {
        "id": authorization.id,
        "account_id": authorization.account_id,
        "identifier_type": authorization.identifier.type,
        "identifier_value": authorization.identifier.value,
        "wildcard": int(authorization.wildcard),
        "status": authorization.status,
        "expires": to_epoch(authorization.expires),
        "created": to_epoch(authorization.created),
    }


def authorization_from_rows(row: Row, challenges: Sequence[Row]) -> Authorization:
    """An authorization from its row and its challenges in position order."""
    return Authorization(
        id=row["id"],
        account_id=row["account_id"],
        identifier=Identifier(row["identifier_type"], row["identifier_value"]),
        status=row["status"],
        expires=from_epoch(row["expires"]),
        wildcard=bool(row["wildcard"]),
        challenges=tuple(challenge_from_row(c) for c in challenges),
        created=from_epoch(row["created"]),
    )


def certificate_to_row(certificate: CertificateRecord) -> dict[str, Any]:
    return {
        "serial": certificate.serial.lower(),
        "account_id": certificate.account_id,
        "order_id": certificate.order_id,
        "status": certificate.status,
        "not_before": to_epoch(certificate.not_before),
        "not_after": to_epoch(certificate.not_after),
        "created": to_epoch(certificate.created),
        "der": certificate.der,
        "revoked_at": to_epoch_or_none(certificate.revoked_at),
        "revocation_reason": certificate.revocation_reason,
        "shard": certificate.shard,
        "channel": certificate.channel,
    }


def certificate_from_row(row: Row) -> CertificateRecord:
    der = row["der"]
    return CertificateRecord(
        serial=row["serial"],
        account_id=row["account_id"],
        order_id=row["order_id"],
        status=row["status"],
        not_before=from_epoch(row["not_before"]),
        not_after=from_epoch(row["not_after"]),
        created=from_epoch(row["created"]),
        der=None if der is None else bytes(der),
        revoked_at=from_epoch_or_none(row["revoked_at"]),
        revocation_reason=row["revocation_reason"],
        shard=row["shard"],
        channel=row["channel"],
    )


def audit_from_row(row: Row) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        time=from_epoch(row["time"]),
        event=row["event"],
        actor=row["actor"],
        data=json.loads(row["data"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def tenant_to_row(tenant: TenantRecord) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "slug": tenant.slug,
        "status": tenant.status,
        "policy": to_json(tenant.policy),
        "ca_certificate_pem": tenant.ca_certificate_pem,
        "ca_key_label": tenant.ca_key_label,
        "created": to_epoch(tenant.created),
        "model": tenant.model,
        "tier": tenant.tier,
    }


def tenant_from_row(row: Row) -> TenantRecord:
    return TenantRecord(
        id=row["id"],
        slug=row["slug"],
        status=row["status"],
        policy=json.loads(row["policy"]),
        ca_certificate_pem=row["ca_certificate_pem"],
        ca_key_label=row["ca_key_label"],
        created=from_epoch(row["created"]),
        model=row["model"],
        tier=row["tier"],
    )


def require_row(cursor: sqlite3.Cursor, what: str) -> None:
    """Fail an update that matched no row, so the caller's transaction rolls back."""
    if cursor.rowcount == 0:
        raise StoreError(f"no such {what}")


def append_audit(conn: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    """Chain ``entries`` after the tenant's last record, inside the caller's transaction."""
    if not entries:
        return
    last = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchall()
    seq, prev_hash = (last[0]["seq"], last[0]["hash"]) if last else (0, GENESIS_HASH)
    moment = utcnow()
    for entry in entries:
        seq += 1
        # Hash exactly what a reader will get back from the JSON column.
        data = json.loads(to_json(entry.data))
        digest = chain_hash(prev_hash, seq, moment, entry.event, entry.actor, data)
        conn.execute(
            "INSERT INTO audit (seq, time, event, actor, data, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, to_epoch(moment), entry.event, entry.actor, to_json(data), prev_hash, digest),
        )
        prev_hash = digest


def update_order_row(conn: sqlite3.Connection, order: Order) -> None:
    """Store an order's mutable columns; its identifiers and links never change."""
    cursor = conn.execute(
        "UPDATE orders SET status = :status, expires = :expires, not_before = :not_before,"
        " not_after = :not_after, error = :error, certificate_serial = :certificate_serial,"
        " profile = :profile, replaces = :replaces WHERE id = :id",
        order_to_row(order),
    )
    require_row(cursor, "order")


def insert_authorization(conn: sqlite3.Connection, authorization: Authorization) -> None:
    """Insert an authorization and its challenges, keeping the challenges' order."""
    insert(conn, "authorizations", authorization_to_row(authorization))
    for position, challenge in enumerate(authorization.challenges):
        insert(conn, "challenges", challenge_to_row(challenge, position))


def authorization_with_challenges(conn: sqlite3.Connection, row: sqlite3.Row) -> Authorization:
    """Complete an authorization row with its challenges, in their order."""
    challenges = conn.execute(
        "SELECT * FROM challenges WHERE authorization_id = ? ORDER BY position", (row["id"],)
    ).fetchall()
    return authorization_from_rows(row, challenges)


def insert_pending_certificate(
    conn: sqlite3.Connection, certificate: CertificateRecord, instance: int
) -> None:
    """Record a serial before it is signed, naming the process that signs it."""
    row = certificate_to_row(certificate)
    row.update(status=CertificateStatus.PENDING, der=None, revoked_at=None, revocation_reason=None)
    row["issuer_instance"] = instance
    insert(conn, "certificates", row)


def ocsp_response_from_row(row: sqlite3.Row) -> OcspResponseRecord:
    return OcspResponseRecord(
        serial=row["serial"],
        der=bytes(row["der"]),
        this_update=from_epoch(row["this_update"]),
        next_update=from_epoch(row["next_update"]),
        not_after=from_epoch(row["not_after"]),
        revoked=bool(row["revoked"]),
        stored_at=datetime.fromtimestamp(row["stored_at"] / 1e6, UTC),
    )
