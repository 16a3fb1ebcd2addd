"""The store contract: one tenant's ACME state, and the provider's registry.

A ``TenantStore`` is always bound to one tenant; there is no call that reaches
another tenant's rows. Handlers get it typed as ``StoreReader``; every write
goes through ``acme_mt.authority`` and each write method is one transaction, so
a record is never half-written. Audit entries passed to a write are appended to
the tenant's hash chain inside that same transaction.

Checklist for a new write: add it to ``TenantStore``, implement it in every
back end in one transaction, and add it to the contract suite in tests/contract.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    CertificateRecord,
    Challenge,
    EabKey,
    Identifier,
    Order,
    VerifiedDomain,
)

#: What onboarding makes a tenant id from; the stores refuse anything else, since
#: ids name schemas and files.
TENANT_ID = re.compile(r"[A-Za-z0-9_-]{1,48}")

#: The stored statuses from which an order may go to processing.
ISSUANCE_STARTS = frozenset({"pending", "ready"})


def check_issuance_start(from_status: str) -> None:
    """Refuse a ``begin_issuance`` from any other status: a programming error."""
    if from_status not in ISSUANCE_STARTS:
        raise ValueError(f"issuance cannot begin for an order that is {from_status}")


@dataclass(frozen=True)
class EstCredential:
    """An EST enrollment credential (RFC 7030 §3.2.3); only a salted hash of its password."""

    id: str
    username: str
    password_hash: str
    created: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class OcspSignerRecord:
    """A tenant's delegated OCSP signing certificate (RFC 6960 §4.2.2.2) and its key's label."""

    key_label: str
    certificate_der: bytes
    not_after: datetime
    created: datetime


@dataclass(frozen=True)
class OcspResponseRecord:
    """A pre-signed OCSP response (RFC 5019 §2.2) kept for every replica to serve.

    One per serial: the response to the SHA-1 CertID that RFC 5019 clients
    send. ``stored_at`` is set by the store when it keeps the response, from
    one clock for every replica (PostgreSQL's), so that replicas can ask for
    what changed since they last looked.
    """

    serial: str
    der: bytes
    this_update: datetime
    next_update: datetime
    not_after: datetime
    revoked: bool
    stored_at: datetime | None = None


@dataclass(frozen=True)
class AuditRecord:
    """An audit entry as chained by the store."""

    seq: int
    time: datetime
    event: str
    actor: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


class StoreReader(Protocol):
    """Read access to one tenant's state: what the web layer may use."""

    async def get_account(self, account_id: str) -> Account | None: ...

    async def get_account_by_thumbprint(self, thumbprint: str) -> Account | None: ...

    async def get_order(self, order_id: str) -> Order | None: ...

    async def list_order_ids(self, account_id: str, limit: int, offset: int) -> list[str]: ...

    async def find_order_replacing(self, cert_id: str) -> Order | None:
        """An order that is not invalid whose ``replaces`` is ``cert_id`` (RFC 9773 §5)."""
        ...

    async def get_authorization(self, authorization_id: str) -> Authorization | None: ...

    async def get_challenge(self, challenge_id: str) -> Challenge | None: ...

    async def find_reusable_authorization(
        self, account_id: str, identifier: Identifier, wildcard: bool, now: datetime
    ) -> Authorization | None:
        """A valid, unexpired authorization of this account for this identifier."""
        ...

    async def get_certificate(self, serial: str) -> CertificateRecord | None: ...

    async def list_revoked_certificates(self, shard: int | None) -> list[CertificateRecord]:
        """Revoked, unexpired certificates (of one CRL shard, or all when ``None``)."""
        ...

    async def list_certificates(self, after_serial: str, limit: int) -> list[CertificateRecord]:
        """Issued certificates, valid or revoked, by serial after ``after_serial``; no DER."""
        ...

    async def get_ocsp_signer(self) -> OcspSignerRecord | None:
        """The delegated OCSP signer that expires last, if any was saved."""
        ...

    async def list_ocsp_responses(
        self, stored_since: datetime, limit: int
    ) -> list[OcspResponseRecord]:
        """Responses kept at or after ``stored_since`` for certificates not yet
        expired, oldest first, at most ``limit``."""
        ...

    async def get_ocsp_response(self, serial: str) -> OcspResponseRecord | None:
        """The response kept for one serial, if its certificate has not expired."""
        ...

    async def get_eab_key(self, kid: str) -> EabKey | None: ...

    async def list_eab_keys(self) -> list[EabKey]: ...

    async def list_domains(self) -> list[VerifiedDomain]:
        """The tenant's domains, verified or still waiting for their TXT record."""
        ...

    async def get_est_credential(self, username: str) -> EstCredential | None:
        """The EST credential with this username, revoked or not."""
        ...

    async def list_audit(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]: ...


class TenantStore(StoreReader, Protocol):
    """Read and write access to one tenant's state; writes are transactions."""

    async def create_account(self, account: Account, audit: Sequence[AuditEntry] = ()) -> Account:
        """Insert an account, binding its EAB key when ``account.eab_kid`` is set.

        Returns the existing account when one with the same thumbprint won a race.

        :raises acme_mt.errors.Conflict: the EAB key is unknown, revoked or bound already.
        """
        ...

    async def update_account(self, account: Account, audit: Sequence[AuditEntry] = ()) -> None:
        """Store a new version of an account (contact, status, key).

        :raises acme_mt.errors.Conflict: the new key's thumbprint belongs to another account.
        """
        ...

    async def create_order(
        self,
        order: Order,
        new_authorizations: Sequence[Authorization],
        audit: Sequence[AuditEntry] = (),
    ) -> None:
        """Insert an order with the authorizations it creates (reused ones exist already)."""
        ...

    async def update_order(self, order: Order, audit: Sequence[AuditEntry] = ()) -> None: ...

    async def create_authorization(
        self, authorization: Authorization, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Insert an authorization outside any order (pre-authorization, RFC 8555 §7.4.1)."""
        ...

    async def update_authorization(
        self, authorization: Authorization, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Store an authorization and the status of each of its challenges."""
        ...

    async def begin_issuance(
        self,
        order: Order,
        certificate: CertificateRecord,
        audit: Sequence[AuditEntry] = (),
        *,
        from_status: str = "ready",
    ) -> bool:
        """Record the serial about to be signed and move the order to processing.

        ``from_status`` is the status the stored order must still have: ready,
        or pending when the caller has just found every authorization valid
        (so the order passes through ready in the same write).
        Returns False, changing nothing, when the order's status was another.
        """
        ...

    async def complete_issuance(
        self, order: Order | None, certificate: CertificateRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Store the signed certificate and, for ACME, the order's final state."""
        ...

    async def abandon_issuance(
        self, order: Order | None, serial: str, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Mark a recorded serial as never issued and put the order back as given."""
        ...

    async def recover_interrupted_issuance(self) -> int:
        """After a crash: abandon pending serials and make their orders ready again."""
        ...

    async def insert_certificate(
        self, certificate: CertificateRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Record a certificate issued outside an ACME order (EST), before signing."""
        ...

    async def revoke_certificate(
        self, serial: str, reason: int, when: datetime, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        """Mark a valid certificate revoked; False when it was not valid (already revoked)."""
        ...

    async def create_eab_key(self, key: EabKey, audit: Sequence[AuditEntry] = ()) -> None: ...

    async def save_domain(self, domain: VerifiedDomain, audit: Sequence[AuditEntry] = ()) -> None:
        """Insert or replace a domain's verification state."""
        ...

    async def revoke_eab_key(self, kid: str, audit: Sequence[AuditEntry] = ()) -> bool:
        """Stop a key binding new accounts; False when it was unknown or revoked already."""
        ...

    async def create_est_credential(
        self, credential: EstCredential, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """:raises acme_mt.errors.Conflict: the id or username is taken."""
        ...

    async def revoke_est_credential(
        self, credential_id: str, when: datetime, audit: Sequence[AuditEntry] = ()
    ) -> bool:
        """Revoke an EST credential; False, changing nothing, when unknown or revoked already."""
        ...

    async def save_ocsp_signer(
        self, signer: OcspSignerRecord, audit: Sequence[AuditEntry] = ()
    ) -> None:
        """Keep a new delegated OCSP signer so that a restart reuses it."""
        ...

    async def save_ocsp_responses(self, responses: Sequence[OcspResponseRecord]) -> None:
        """Keep responses for every replica, one per serial.

        A response never replaces one with a later ``this_update``, and a
        ``good`` one never replaces a revoked one, so a replica that read a
        certificate just before its revocation cannot undo it.
        """
        ...

    async def claim_job(self, name: str, holder: str, now: datetime, until: datetime) -> bool:
        """Take or extend the lease on a background job (say, refreshing OCSP responses).

        True when ``holder`` holds it until ``until``: nobody held it, the
        lease had run out by ``now``, or ``holder`` held it already. Replicas
        use it so that one of them does each periodic job.
        """
        ...

    async def append_audit(self, audit: Sequence[AuditEntry]) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class TenantRecord:
    """A tenant as the provider's registry keeps it."""

    id: str
    slug: str
    status: str
    policy: dict[str, Any]
    ca_certificate_pem: str
    ca_key_label: str
    created: datetime
    model: str = "shared"
    tier: str = "standard"


class RegistryStore(Protocol):
    """The provider-wide list of tenants and provider-level values."""

    async def list_tenants(self) -> list[TenantRecord]: ...

    async def get_tenant(self, slug: str) -> TenantRecord | None: ...

    async def create_tenant(self, tenant: TenantRecord) -> None:
        """:raises acme_mt.errors.Conflict: the slug is taken."""
        ...

    async def update_tenant(self, tenant: TenantRecord) -> None: ...

    async def get_value(self, name: str) -> str | None:
        """A provider-level value such as the root certificate's PEM."""
        ...

    async def set_value(self, name: str, value: str) -> None: ...

    async def close(self) -> None: ...


class StoreBackend(Protocol):
    """Opens the registry and per-tenant stores of one back end."""

    async def open_registry(self) -> RegistryStore: ...

    async def create_tenant_store(self, tenant_id: str, slug: str) -> TenantStore:
        """Create (schema, file or database) and open a new tenant's store."""
        ...

    async def open_tenant_store(self, tenant_id: str, slug: str) -> TenantStore: ...

    async def close(self) -> None: ...
