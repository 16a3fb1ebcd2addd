"""ACME Renewal Information (RFC 9773): certificate ids, suggested windows, ``replaces``.

A certificate's ARI id is base64url(AKI keyIdentifier) "." base64url(serial
DER content octets) (§4.1). The window is placed at a fraction of the
certificate's lifetime from the tenant's policy; a revoked certificate, or one
issued before the tenant's ``renew_issued_before``, gets a window already open
so that clients renew at once (§4.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import josepy as jose
from cryptography import x509

from acme_mt.errors import AcmeProblem
from acme_mt.models import Account, CertificateRecord, CertificateStatus, utcnow
from acme_mt.tenancy.context import TenantContext


@dataclass(frozen=True)
class RenewalWindow:
    start: datetime
    end: datetime


def cert_id(key_identifier: bytes, serial: int) -> str:
    """The ARI id of a certificate from its AKI key identifier and serial."""
    length = max(1, (serial.bit_length() + 8) // 8)
    serial_bytes = serial.to_bytes(length, "big")
    if len(serial_bytes) > 1 and serial_bytes[0] == 0 and serial_bytes[1] < 0x80:
        serial_bytes = serial_bytes[1:]
    return f"{jose.b64encode(key_identifier).decode()}.{jose.b64encode(serial_bytes).decode()}"


def parse_cert_id(value: str) -> tuple[bytes, int]:
    """Split an ARI id into key identifier and serial; malformed for anything else."""
    key_part, dot, serial_part = value.partition(".")
    if not dot or not key_part or not serial_part or "=" in value:
        raise AcmeProblem("malformed", "The certificate id must be two base64url parts")
    try:
        key_identifier = jose.b64decode(key_part)
        serial_bytes = jose.b64decode(serial_part)
    except (ValueError, TypeError):
        raise AcmeProblem("malformed", "The certificate id is not base64url") from None
    if not serial_bytes or serial_bytes[0] & 0x80 or len(serial_bytes) > 21:
        raise AcmeProblem("malformed", "The certificate id's serial is not a positive integer")
    return key_identifier, int.from_bytes(serial_bytes, "big")


def ca_key_identifier(tenant: TenantContext) -> bytes:
    ski = tenant.issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return ski.value.key_identifier


async def find_certificate(tenant: TenantContext, value: str) -> CertificateRecord:
    """The certificate an ARI id names at this tenant, or a 404 problem."""
    key_identifier, serial = parse_cert_id(value)
    record = None
    if key_identifier == ca_key_identifier(tenant):
        record = await tenant.store.get_certificate(format(serial, "x"))
    if record is None or record.der is None:
        raise AcmeProblem("malformed", "No such certificate was issued here", status=404)
    return record


def suggested_window(tenant: TenantContext, record: CertificateRecord) -> RenewalWindow:
    """Where in its lifetime a certificate should be renewed."""
    now = utcnow()
    policy = tenant.policy
    renew_now = record.status == CertificateStatus.REVOKED
    if policy.renew_issued_before:
        cutoff = datetime.fromisoformat(policy.renew_issued_before.replace("Z", "+00:00"))
        renew_now = renew_now or record.created < cutoff
    if renew_now:
        return RenewalWindow(now - timedelta(hours=2), now - timedelta(minutes=1))
    lifetime = record.not_after - record.not_before
    start = record.not_before + lifetime * policy.renewal_window_start
    end = min(start + lifetime / 10, record.not_after)
    return RenewalWindow(start, end)


async def check_replaces(tenant: TenantContext, account: Account, replaces: Any) -> str:
    """Validate newOrder's ``replaces`` (RFC 9773 §5) and return the certificate id.

    :raises AcmeProblem: malformed, unauthorized, or alreadyReplaced (409).
    """
    if not isinstance(replaces, str):
        raise AcmeProblem("malformed", "replaces must be a certificate id string")
    record = await find_certificate(tenant, replaces)
    if record.account_id != account.id:
        raise AcmeProblem("unauthorized", "The replaced certificate belongs to another account")
    # Limitation: two concurrent newOrders naming the same certificate can both pass this
    # check; a unique index on open replacing orders would make the store refuse the second.
    if await tenant.store.find_order_replacing(replaces) is not None:
        raise AcmeProblem("alreadyReplaced", "Another order already replaces this certificate")
    return replaces
