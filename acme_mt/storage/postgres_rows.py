"""How the PostgreSQL stores turn models into rows and rows back into models.

Times are ``timestamptz`` and come back as timezone-aware UTC datetimes; JSON
columns are ``jsonb`` written as compact text, except the audit chain's
``json``, which keeps the exact text that was hashed; serials are lowercase hex.
Rows written inside a tenant transaction take its tenant as their
``tenant_id`` by default.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from acme_mt.models import (
    Account,
    Authorization,
    CertificateRecord,
    Challenge,
    EabKey,
    EabPolicy,
    Identifier,
    Order,
)
from acme_mt.storage.base import AuditRecord, EstCredential, OcspResponseRecord, TenantRecord

Conn: TypeAlias = asyncpg.Connection
Row: TypeAlias = asyncpg.Record

ACCOUNT_COLUMNS = "id, thumbprint, jwk, status, contact, created, eab_kid"
CERTIFICATE_COLUMNS = (
    "serial, account_id, order_id, status, not_before, not_after, created, der, revoked_at,"
    " revocation_reason, shard, channel"
)
EAB_COLUMNS = "kid, hmac_key, created, account_id, revoked, policy"
EST_COLUMNS = "id, username, password_hash, created, revoked_at"
AUDIT_COLUMNS = "seq, time, event, actor, data, prev_hash, hash"
TENANT_COLUMNS = "id, slug, status, policy, ca_certificate_pem, ca_key_label, created, model, tier"


def from_json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_json(value: Any) -> str:
    """Compact JSON text with sorted keys, as the audit chain hashes it."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def to_json_or_none(value: Any) -> str | None:
    return None if value is None else to_json(value)


def aware(moment: datetime) -> datetime:
    """:raises ValueError: the time is naive, so its instant is unknown."""
    if moment.tzinfo is None:
        raise ValueError("the store keeps timezone-aware times only")
    return moment


def account_from_row(row: Row) -> Account:
    return Account(
        id=row["id"],
        jwk=json.loads(row["jwk"]),
        thumbprint=row["thumbprint"],
        status=row["status"],
        contact=tuple(json.loads(row["contact"])),
        created=row["created"],
        eab_kid=row["eab_kid"],
    )


def account_values(account: Account) -> tuple[Any, ...]:
    """The values of ``ACCOUNT_COLUMNS``, in order."""
    return (
        account.id,
        account.thumbprint,
        to_json(account.jwk),
        account.status,
        to_json(list(account.contact)),
        aware(account.created),
        account.eab_kid,
    )


def eab_key_from_row(row: Row) -> EabKey:
    return EabKey(
        kid=row["kid"],
        hmac_key=bytes(row["hmac_key"]),
        created=row["created"],
        account_id=row["account_id"],
        revoked=row["revoked"],
        policy=EabPolicy.from_json(from_json_or_none(row["policy"])),
    )


def eab_key_values(key: EabKey) -> tuple[Any, ...]:
    """The values of ``EAB_COLUMNS``, in order."""
    return (
        key.kid,
        key.hmac_key,
        aware(key.created),
        key.account_id,
        key.revoked,
        to_json(key.policy.to_json()),
    )


def est_credential_from_row(row: Row) -> EstCredential:
    return EstCredential(
        id=row["id"],
        username=row["username"],
        password_hash=row["password_hash"],
        created=row["created"],
        revoked_at=row["revoked_at"],
    )


def order_from_row(row: Row) -> Order:
    """An order from a row of ``order_by_id``: its columns and its authorization ids."""
    return Order(
        id=row["id"],
        account_id=row["account_id"],
        status=row["status"],
        identifiers=tuple(
            Identifier(i["type"], i["value"]) for i in json.loads(row["identifiers"])
        ),
        authorization_ids=tuple(row["authorization_ids"]),
        expires=row["expires"],
        created=row["created"],
        not_before=row["not_before"],
        not_after=row["not_after"],
        error=from_json_or_none(row["error"]),
        certificate_serial=row["certificate_serial"],
        profile=row["profile"],
        replaces=row["replaces"],
    )


def challenge_from_row(row: Row) -> Challenge:
    return Challenge(
        id=row["id"],
        authorization_id=row["authorization_id"],
        type=row["type"],
        token=row["token"],
        status=row["status"],
        validated=row["validated"],
        error=from_json_or_none(row["error"]),
    )


def authorization_from_rows(rows: Sequence[Row]) -> Authorization | None:
    """An authorization from the rows of ``authorization_by``, one per challenge in order."""
    if not rows:
        return None
    row = rows[0]
    return Authorization(
        id=row["id"],
        account_id=row["account_id"],
        identifier=Identifier(row["identifier_type"], row["identifier_value"]),
        status=row["status"],
        expires=row["expires"],
        wildcard=row["wildcard"],
        challenges=tuple(
            Challenge(
                id=c["challenge_id"],
                authorization_id=row["id"],
                type=c["challenge_type"],
                token=c["challenge_token"],
                status=c["challenge_status"],
                validated=c["challenge_validated"],
                error=from_json_or_none(c["challenge_error"]),
            )
            for c in rows
            if c["challenge_id"] is not None
        ),
        created=row["created"],
    )


def certificate_from_row(row: Row) -> CertificateRecord:
    der = row["der"]
    return CertificateRecord(
        serial=row["serial"],
        account_id=row["account_id"],
        order_id=row["order_id"],
        status=row["status"],
        not_before=row["not_before"],
        not_after=row["not_after"],
        created=row["created"],
        der=None if der is None else bytes(der),
        revoked_at=row["revoked_at"],
        revocation_reason=row["revocation_reason"],
        shard=row["shard"],
        channel=row["channel"],
    )


def audit_from_row(row: Row) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        time=row["time"],
        event=row["event"],
        actor=row["actor"],
        data=json.loads(row["data"]),
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def tenant_from_row(row: Row) -> TenantRecord:
    return TenantRecord(
        id=row["id"],
        slug=row["slug"],
        status=row["status"],
        policy=json.loads(row["policy"]),
        ca_certificate_pem=row["ca_certificate_pem"],
        ca_key_label=row["ca_key_label"],
        created=row["created"],
        model=row["model"],
        tier=row["tier"],
    )


def tenant_values(tenant: TenantRecord) -> tuple[Any, ...]:
    """The values of ``TENANT_COLUMNS``, in order."""
    return (
        tenant.id,
        tenant.slug,
        tenant.status,
        to_json(tenant.policy),
        tenant.ca_certificate_pem,
        tenant.ca_key_label,
        aware(tenant.created),
        tenant.model,
        tenant.tier,
    )


def ocsp_response_from_row(row: Row) -> OcspResponseRecord:
    return OcspResponseRecord(
        serial=row["serial"],
        der=bytes(row["der"]),
        this_update=row["this_update"],
        next_update=row["next_update"],
        not_after=row["not_after"],
        revoked=row["revoked"],
        stored_at=row["stored_at"],
    )
