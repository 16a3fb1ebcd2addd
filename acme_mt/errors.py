"""Domain errors, each carrying its RFC 8555 §6.7 problem type and HTTP status.

Inner layers raise these and know nothing of HTTP; the web layer renders them as
RFC 7807 problem documents in one place (``acme_mt.web.problems``).

Checklist for a new problem type: add it to ``PROBLEM_TYPES`` in RFC order, give
it an exception class below, and add a test that renders it.

Types we never emit: ``userActionRequired`` (no terms of service to agree to)
and ``externalAccountRequired`` is emitted only by tenants that require EAB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"

#: RFC 8555 §6.7 (and extensions), in RFC order: type -> (HTTP status, default detail).
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "accountDoesNotExist": (400, "No account exists for this key"),
    "alreadyRevoked": (400, "The certificate is already revoked"),
    "badCSR": (400, "The CSR is unacceptable"),
    "badNonce": (400, "The nonce is stale, reused or missing"),
    "badPublicKey": (400, "The JWS was signed by an unsupported key"),
    "badRevocationReason": (400, "The revocation reason is not allowed"),
    "badSignatureAlgorithm": (400, "The JWS algorithm is not supported"),
    "caa": (403, "CAA records forbid issuance"),
    "compound": (400, "Several problems occurred"),
    "connection": (400, "The server could not connect to the validation target"),
    "dns": (400, "A DNS look-up failed during validation"),
    "externalAccountRequired": (400, "This server requires external account binding"),
    "incorrectResponse": (403, "The response to the challenge was wrong"),
    "invalidContact": (400, "A contact URL is invalid"),
    "malformed": (400, "The request message was malformed"),
    "orderNotReady": (403, "The order is not ready to be finalized"),
    "rateLimited": (429, "A rate limit was exceeded"),
    "rejectedIdentifier": (400, "The server will not issue for this identifier"),
    "serverInternal": (500, "The server hit an internal error"),
    "tls": (400, "A TLS error occurred during validation"),
    "unauthorized": (403, "The client lacks authorization"),
    "unsupportedContact": (400, "The contact URL scheme is not supported"),
    "unsupportedIdentifier": (400, "The identifier type is not supported"),
    "userActionRequired": (403, "Visit the instance URL and take action"),
    # RFC 9773 §4.2 and draft-ietf-acme-profiles.
    "alreadyReplaced": (409, "The certificate was already replaced"),
    "invalidProfile": (400, "The requested profile does not exist"),
}


@dataclass(frozen=True)
class Subproblem:
    """A problem about one identifier (RFC 8555 §6.7.1)."""

    type: str
    detail: str
    identifier: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": ACME_ERROR_PREFIX + self.type, "detail": self.detail}
        if self.identifier is not None:
            body["identifier"] = self.identifier
        return body


class AcmeMtError(Exception):
    """Root of every error this package raises on purpose."""


@dataclass
class AcmeProblem(AcmeMtError):
    """An error the client should see, as an RFC 8555 problem type."""

    type: str
    detail: str = ""
    subproblems: Sequence[Subproblem] = field(default_factory=tuple)
    retry_after: int | None = None
    status: int = 0

    def __post_init__(self) -> None:
        default_status, default_detail = PROBLEM_TYPES[self.type]
        if not self.status:
            self.status = default_status
        if not self.detail:
            self.detail = default_detail
        super().__init__(self.detail)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": ACME_ERROR_PREFIX + self.type,
            "detail": self.detail,
            "status": self.status,
        }
        if self.subproblems:
            body["subproblems"] = [sub.to_json() for sub in self.subproblems]
        return body


def problem(kind: str, detail: str = "", **kwargs: Any) -> AcmeProblem:
    """Build an ``AcmeProblem`` of a type from ``PROBLEM_TYPES``."""
    return AcmeProblem(kind, detail, **kwargs)


class NotFound(AcmeMtError):
    """The resource does not exist for this tenant (rendered as a plain 404)."""


class TenantUnavailable(AcmeMtError):
    """The tenant's store or key partition failed; other tenants go on (503)."""

    def __init__(self, detail: str = "The service is temporarily unavailable") -> None:
        super().__init__(detail)
        self.detail = detail


class StoreError(AcmeMtError):
    """The store refused or failed an operation."""


class Conflict(StoreError):
    """A uniqueness rule of the store was hit (a key already bound, a serial reused)."""


class KeyStoreError(AcmeMtError):
    """The key store failed: a missing key, a locked token, a module fault."""


class ConfigError(AcmeMtError):
    """A setting or policy is invalid; the message names the field."""
