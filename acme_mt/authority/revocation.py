"""Certificate revocation (RFC 8555 §7.6).

A request is authorized by the account that ordered the certificate or by the
certificate's own key. The certificate must be one this tenant issued, byte for
byte; anything else looks like a certificate that does not exist.
"""

from __future__ import annotations

import logging
from typing import Any

import josepy as jose
from cryptography import x509

from acme_mt.errors import AcmeProblem
from acme_mt.events import Events
from acme_mt.models import Account, AuditEntry, CertificateRecord, CertificateStatus, utcnow
from acme_mt.tenancy.context import TenantContext

logger = logging.getLogger(__name__)

#: RFC 5280 §5.3.1 reasons a subscriber may give: unspecified, keyCompromise,
#: affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn.
ALLOWED_REASONS = frozenset({0, 1, 3, 4, 5, 9})


def parse_revocation(payload: dict[str, Any]) -> tuple[bytes, x509.Certificate, int]:
    """The certificate DER, the parsed certificate and the reason of a revokeCert payload."""
    raw = payload.get("certificate")
    if not isinstance(raw, str):
        raise AcmeProblem("malformed", "revokeCert needs a certificate")
    try:
        der = jose.b64decode(raw)
        certificate = x509.load_der_x509_certificate(der)
    except (ValueError, TypeError):
        raise AcmeProblem("malformed", "The certificate is not base64url DER") from None
    reason = payload.get("reason", 0)
    if not isinstance(reason, int) or isinstance(reason, bool) or reason not in ALLOWED_REASONS:
        allowed = ", ".join(str(r) for r in sorted(ALLOWED_REASONS))
        raise AcmeProblem("badRevocationReason", f"Allowed reason codes: {allowed}")
    return der, certificate, reason


class RevocationService:
    """The only writer of revocations."""

    def __init__(self, events: Events) -> None:
        self._events = events

    async def find(
        self, tenant: TenantContext, der: bytes, certificate: x509.Certificate
    ) -> CertificateRecord:
        """The record of a certificate this tenant issued, or a not-found problem."""
        record = await tenant.store.get_certificate(format(certificate.serial_number, "x"))
        if record is None or record.der != der:
            raise AcmeProblem("malformed", "No such certificate was issued here", status=404)
        return record

    async def revoke(
        self,
        tenant: TenantContext,
        record: CertificateRecord,
        reason: int,
        *,
        account: Account | None,
        by_certificate_key: bool,
    ) -> None:
        """Revoke once; the signer must be the ordering account or the certificate key.

        Limitation: RFC 8555 §7.6 also lets an account that holds valid authorizations for
        every name revoke; checking those authorizations here would end it.
        """
        if not by_certificate_key and (account is None or account.id != record.account_id):
            raise AcmeProblem("unauthorized", "This account did not order the certificate")
        if record.status == CertificateStatus.REVOKED:
            raise AcmeProblem("alreadyRevoked", "The certificate is already revoked")
        actor = (
            "certificate-key" if by_certificate_key else f"account:{account.id if account else ''}"
        )
        audit = AuditEntry(
            "certificate.revoked", {"serial": record.serial, "reason": reason}, actor=actor
        )
        if not await tenant.store.revoke_certificate(record.serial, reason, utcnow(), (audit,)):
            raise AcmeProblem("alreadyRevoked", "The certificate is already revoked")
        self._events.revoked(tenant.id, record.serial)
        logger.info("revoked serial %s reason %d", record.serial, reason)
