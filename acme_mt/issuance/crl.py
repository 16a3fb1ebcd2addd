"""Certificate revocation lists of a tenant CA or the provider root (RFC 5280 §5).

A ``CrlDraft`` says what one CRL holds. It becomes a cryptography builder only
inside the signing thread (``acme_mt.issuance.signer.sign``): turning a million
revoked entries into ASN.1 objects takes seconds the event loop must not spend.

Every CRL is version 2 (§5.1.2.1) with thisUpdate and nextUpdate (§5.1.2.4-5),
the issuer's key identifier (AKI, §5.2.1) and a CRL number (§5.2.3). A shard of
a sharded CRL names its own URL in a critical Issuing Distribution Point with
onlyContainsUserCerts (§5.2.5). A full CRL that has deltas points at them with
Freshest CRL (§5.2.6); a delta carries a critical Delta CRL Indicator naming
the number of its base (§5.2.4) and the same Issuing Distribution Point as that
base. Entries carry serial and revocationDate (§5.1.2.6) and a reasonCode
unless the reason is unspecified (§5.3.1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cryptography import x509

from acme_mt.issuance.certificates import authority_key_identifier, check_key_pair
from acme_mt.issuance.signer import SignatureHash, sign
from acme_mt.keystores.base import SigningKey
from acme_mt.models import AuditEntry

logger = logging.getLogger(__name__)

#: RFC 5280 §5.3.1 reason codes this CA publishes; unspecified (0) omits the extension.
PUBLISHED_REASONS: dict[int, x509.ReasonFlags | None] = {
    0: None,
    1: x509.ReasonFlags.key_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    9: x509.ReasonFlags.privilege_withdrawn,
}

#: One immutable reasonCode extension per reason, shared by every entry that has it.
_REASON_CODES = {
    code: x509.CRLReason(flag) for code, flag in PUBLISHED_REASONS.items() if flag is not None
}

#: §5.2.3: a CRL number fits in 20 octets.
MAX_CRL_NUMBER = (1 << 159) - 1


class Revoked(Protocol):
    """What an entry needs of a revoked certificate; ``CertificateRecord`` has it."""

    @property
    def serial(self) -> str: ...

    @property
    def revoked_at(self) -> datetime | None: ...

    @property
    def revocation_reason(self) -> int | None: ...


@dataclass(frozen=True)
class RevokedSerial:
    """A revoked serial that has no certificate record, such as a tenant CA on the root CRL."""

    serial: str
    revoked_at: datetime | None
    revocation_reason: int | None = None


def revoked_entry(entry: Revoked, fallback: datetime) -> x509.RevokedCertificate:
    """One CRL entry; a missing date becomes ``fallback``, a reason outside §5.3.1's set none."""
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(int(entry.serial, 16))
        .revocation_date(entry.revoked_at or fallback)
    )
    reason = _REASON_CODES.get(entry.revocation_reason or 0)
    if reason is not None:
        builder = builder.add_extension(reason, critical=False)
    return builder.build()


def _distribution_point(url: str) -> x509.DistributionPoint:
    return x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )


def issuing_distribution_point(url: str) -> x509.IssuingDistributionPoint:
    """A shard's scope (§5.2.5): its own URL, leaf certificates only."""
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        only_contains_user_certs=True,
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )


@dataclass(frozen=True)
class CrlDraft:
    """The content of one CRL; ``sign`` builds and signs it in the caller's thread.

    ``scope_url`` is the Issuing Distribution Point, ``delta_url`` the Freshest
    CRL of a full CRL, and ``base_number`` makes the draft a delta of that base.
    """

    issuer: x509.Certificate
    number: int
    this_update: datetime
    next_update: datetime
    entries: Sequence[Revoked] = ()
    scope_url: str | None = None
    delta_url: str | None = None
    base_number: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.number <= MAX_CRL_NUMBER:
            raise ValueError("the CRL number must be 0 to 20 octets")
        if self.next_update <= self.this_update:
            raise ValueError("nextUpdate must come after thisUpdate")
        if self.base_number is not None:
            if self.delta_url is not None:
                raise ValueError("a delta CRL carries no Freshest CRL (RFC 5280 §5.2.6)")
            if not 0 <= self.base_number <= self.number:
                raise ValueError("a delta's base number must not exceed its own number")

    @property
    def is_delta(self) -> bool:
        return self.base_number is not None

    def builder(self) -> x509.CertificateRevocationListBuilder:
        """The cryptography builder; slow for many entries, so call it off the loop."""
        revoked = [revoked_entry(entry, self.this_update) for entry in self.entries]
        odd = sum(1 for e in self.entries if (e.revocation_reason or 0) not in PUBLISHED_REASONS)
        if odd:
            logger.warning("%d CRL entries have an unpublished reason; listed as unspecified", odd)
        # The constructor takes the whole list: add_revoked_certificate copies
        # the list on every call, which is quadratic for large CRLs.
        builder = (
            x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
            .issuer_name(self.issuer.subject)
            .last_update(self.this_update)
            .next_update(self.next_update)
            .add_extension(authority_key_identifier(self.issuer), critical=False)
            .add_extension(x509.CRLNumber(self.number), critical=False)
        )
        if self.scope_url is not None:
            builder = builder.add_extension(
                issuing_distribution_point(self.scope_url), critical=True
            )
        if self.delta_url is not None:
            freshest = x509.FreshestCRL([_distribution_point(self.delta_url)])
            builder = builder.add_extension(freshest, critical=False)
        if self.base_number is not None:
            builder = builder.add_extension(x509.DeltaCRLIndicator(self.base_number), critical=True)
        return builder

    def sign(
        self, private_key: SigningKey, algorithm: SignatureHash
    ) -> x509.CertificateRevocationList:
        """Build and sign; ``acme_mt.issuance.signer.sign`` calls this in a worker thread."""
        return self.builder().sign(private_key, algorithm)


class AuditSink(Protocol):
    """Where intent and outcome of each signature go: a tenant store's audit chain."""

    async def append_audit(self, audit: Sequence[AuditEntry]) -> None: ...


def _audit_data(drafts: Sequence[CrlDraft]) -> dict[str, Any]:
    return {
        "crls": [
            {
                "number": draft.number,
                "scope": draft.scope_url,
                "delta": draft.is_delta,
                "entries": len(draft.entries),
            }
            for draft in drafts
        ]
    }


async def sign_crls(
    drafts: Sequence[CrlDraft],
    key: SigningKey,
    *,
    audit: AuditSink | None = None,
    executor: Executor | None = None,
) -> list[x509.CertificateRevocationList]:
    """Sign CRLs with the key of the CA that issued their entries, off the event loop.

    With ``audit``, the intent goes to the audit chain before the first
    signature and the outcome after the last, as for certificates.

    :raises ValueError: ``key`` does not belong to a draft's issuer.
    """
    for draft in drafts:
        check_key_pair(key, draft.issuer)
    data = _audit_data(drafts)
    if audit is not None:
        await audit.append_audit([AuditEntry("crl.signing", data)])
    try:
        signed = [await sign(draft, key, executor) for draft in drafts]
    except Exception:
        if audit is not None:
            await audit.append_audit([AuditEntry("crl.signing_failed", data)])
        raise
    if audit is not None:
        await audit.append_audit([AuditEntry("crl.signed", data)])
    logger.debug("signed %d CRL(s)", len(signed))
    return signed
