"""The ACME objects of RFC 8555 §7.1 as immutable values, shared by every layer.

Stores persist these, the authority makes new versions of them with
``dataclasses.replace``, and the web layer renders them as JSON.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    """The current time, timezone-aware, to the second (what ACME timestamps carry)."""
    return datetime.now(UTC).replace(microsecond=0)


def new_id() -> str:
    """An unguessable identifier for URLs: 128 random bits, base64url.

    Never one that begins with ``-``: identifiers such as an EAB kid are pasted
    after an option on a command line (certbot's ``--eab-kid``), where a leading
    dash reads as another option.
    """
    while (value := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return value


def new_hmac_key() -> bytes:
    """256 random bits for an EAB MAC key (RFC 8555 §7.3.4), printed as base64url.

    Never a key whose base64url form begins with ``-``, for the reason
    :func:`new_id` gives: it follows ``--eab-hmac-key`` on a command line.
    """
    while base64.urlsafe_b64encode(key := secrets.token_bytes(32)).startswith(b"-"):
        pass
    return key


def rfc3339(moment: datetime) -> str:
    """Format a timestamp as RFC 3339 in UTC with a Z, as ACME objects carry."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AccountStatus:
    VALID = "valid"
    DEACTIVATED = "deactivated"
    REVOKED = "revoked"


class OrderStatus:
    PENDING = "pending"
    READY = "ready"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"


class AuthorizationStatus:
    PENDING = "pending"
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"
    EXPIRED = "expired"
    REVOKED = "revoked"


class ChallengeStatus:
    PENDING = "pending"
    PROCESSING = "processing"
    VALID = "valid"
    INVALID = "invalid"


class CertificateStatus:
    PENDING = "pending"  # recorded before signing; becomes valid when the DER is stored
    VALID = "valid"
    REVOKED = "revoked"
    ABANDONED = "abandoned"  # signing never completed; the serial is never reused


@dataclass(frozen=True)
class Identifier:
    """An RFC 8555 §7.1.4 identifier, kept exactly as the client sent it."""

    type: str
    value: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


@dataclass(frozen=True)
class Account:
    id: str
    jwk: dict[str, Any]
    thumbprint: str
    status: str
    contact: tuple[str, ...]
    created: datetime
    eab_kid: str | None = None


@dataclass(frozen=True)
class Challenge:
    id: str
    authorization_id: str
    type: str
    token: str
    status: str
    validated: datetime | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Authorization:
    id: str
    account_id: str
    identifier: Identifier
    status: str
    expires: datetime
    wildcard: bool
    challenges: tuple[Challenge, ...] = ()
    created: datetime = field(default_factory=utcnow)

    def challenge(self, challenge_id: str) -> Challenge | None:
        return next((c for c in self.challenges if c.id == challenge_id), None)


@dataclass(frozen=True)
class Order:
    id: str
    account_id: str
    status: str
    identifiers: tuple[Identifier, ...]
    authorization_ids: tuple[str, ...]
    expires: datetime
    created: datetime
    not_before: datetime | None = None
    not_after: datetime | None = None
    error: dict[str, Any] | None = None
    certificate_serial: str | None = None
    profile: str | None = None
    replaces: str | None = None


@dataclass(frozen=True)
class CertificateRecord:
    """An issued (or about to be issued) certificate; ``serial`` is lowercase hex."""

    serial: str
    account_id: str | None
    order_id: str | None
    status: str
    not_before: datetime
    not_after: datetime
    created: datetime
    der: bytes | None = None
    revoked_at: datetime | None = None
    revocation_reason: int | None = None
    shard: int = 0
    channel: str = "acme"


@dataclass(frozen=True)
class EabPolicy:
    """What accounts bound through one EAB key may do, beyond the tenant's policy."""

    allowed_suffixes: tuple[str, ...] = ()
    allowed_profiles: tuple[str, ...] = ()
    expires: datetime | None = None
    max_accounts: int = 1
    #: Accounts bound through this key skip live challenges for names under the
    #: tenant's verified domains.
    pre_validated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed_suffixes": list(self.allowed_suffixes),
            "allowed_profiles": list(self.allowed_profiles),
            "expires": rfc3339(self.expires) if self.expires else None,
            "max_accounts": self.max_accounts,
            "pre_validated": self.pre_validated,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> EabPolicy:
        if not raw:
            return cls()
        expires = raw.get("expires")
        return cls(
            allowed_suffixes=tuple(raw.get("allowed_suffixes") or ()),
            allowed_profiles=tuple(raw.get("allowed_profiles") or ()),
            expires=datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None,
            max_accounts=int(raw.get("max_accounts", 1)),
            pre_validated=bool(raw.get("pre_validated", False)),
        )

    def allows_name(self, name: str) -> bool:
        if not self.allowed_suffixes:
            return True
        base = name.lower().removeprefix("*.")
        return any(base == s or base.endswith("." + s) for s in self.allowed_suffixes)


@dataclass(frozen=True)
class VerifiedDomain:
    """A domain a tenant proves once by DNS TXT; ``verified`` is None until then."""

    domain: str
    token: str
    requested: datetime
    verified: datetime | None = None

    def covers(self, name: str) -> bool:
        base = name.lower().removeprefix("*.")
        return self.verified is not None and (
            base == self.domain or base.endswith("." + self.domain)
        )


@dataclass(frozen=True)
class EabKey:
    """An external account binding key (RFC 8555 §7.3.4); ``hmac_key`` is raw bytes."""

    kid: str
    hmac_key: bytes
    created: datetime
    account_id: str | None = None
    revoked: bool = False
    policy: EabPolicy = field(default_factory=EabPolicy)

    def usable(self, now: datetime) -> bool:
        return not self.revoked and (self.policy.expires is None or self.policy.expires > now)


@dataclass(frozen=True)
class AuditEntry:
    """One event for a tenant's audit chain; the store adds sequence and hashes."""

    event: str
    data: dict[str, Any]
    actor: str = "server"
