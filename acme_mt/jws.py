"""JWS request authentication (RFC 8555 §6.2-6.4), on top of josepy.

Every ACME POST is a flattened JWS whose protected header carries ``alg``,
``nonce``, ``url`` and exactly one of ``jwk`` or ``kid``. josepy parses and
verifies; this module adds the ACME header fields and the ACME rules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from josepy import jws as jose_jws
from josepy.b64 import b64decode, b64encode
from josepy.errors import DeserializationError, Error
from josepy.json_util import field
from josepy.jwk import JWK, JWKRSA, JWKOct

from acme_mt.errors import AcmeProblem

#: RFC 8555 §6.2: asymmetric algorithms only. EdDSA waits for josepy to support it.
ALLOWED_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256")
EAB_ALGORITHMS = ("HS256", "HS384", "HS512")

JOSE_CONTENT_TYPE = "application/jose+json"


class AcmeHeader(jose_jws.Header):
    """A JOSE header with the two ACME fields, nonce and url (RFC 8555 §6.4, §6.5)."""

    nonce: str | None = field("nonce", omitempty=True)
    url: str | None = field("url", omitempty=True)


class AcmeSignature(jose_jws.Signature):
    __slots__ = jose_jws.Signature._orig_slots
    header_cls = AcmeHeader
    header: AcmeHeader = field(
        "header", omitempty=True, default=AcmeHeader(), decoder=AcmeHeader.from_json
    )


class AcmeJWS(jose_jws.JWS):
    __slots__ = jose_jws.JWS._orig_slots
    signature_cls = AcmeSignature


@dataclass(frozen=True)
class ParsedJWS:
    """A JWS whose shape is checked but whose signature is not yet verified."""

    jws: AcmeJWS
    header: AcmeHeader
    payload: bytes
    raw_protected: dict[str, Any]

    @property
    def is_post_as_get(self) -> bool:
        return self.payload == b""

    def payload_json(self) -> dict[str, Any]:
        """The payload as a JSON object, or malformed."""
        try:
            value = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError):
            raise AcmeProblem("malformed", "The JWS payload is not JSON") from None
        if not isinstance(value, dict):
            raise AcmeProblem("malformed", "The JWS payload must be a JSON object")
        return value


def parse_jws(body: bytes | dict[str, Any], *, eab: bool = False) -> ParsedJWS:
    """Parse a flattened JWS and check its header's shape (not its signature or nonce).

    :raises AcmeProblem: malformed, or badSignatureAlgorithm with the accepted list.
    """
    try:
        obj = json.loads(body) if isinstance(body, bytes) else body
    except (ValueError, UnicodeDecodeError):
        raise AcmeProblem("malformed", "The request body is not JSON") from None
    if not isinstance(obj, dict):
        raise AcmeProblem("malformed", "The request body must be a flattened JWS object")
    if "signatures" in obj or "header" in obj:
        raise AcmeProblem("malformed", "Only the flattened JWS serialization is accepted")
    if not all(isinstance(obj.get(k), str) for k in ("protected", "payload", "signature")):
        raise AcmeProblem("malformed", "The JWS needs protected, payload and signature strings")
    try:
        raw_protected = json.loads(b64decode(obj["protected"]))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise AcmeProblem("malformed", "The JWS protected header is not base64url JSON") from None
    if not isinstance(raw_protected, dict):
        raise AcmeProblem("malformed", "The JWS protected header must be a JSON object")
    allowed = EAB_ALGORITHMS if eab else ALLOWED_ALGORITHMS
    if raw_protected.get("alg") not in allowed:
        prob = AcmeProblem("badSignatureAlgorithm", f"Accepted algorithms: {', '.join(allowed)}")
        raise prob
    try:
        parsed = cast(AcmeJWS, AcmeJWS.from_json(obj))
    except (DeserializationError, ValueError, TypeError, KeyError):
        raise AcmeProblem("malformed", "The JWS could not be parsed") from None
    header = cast(AcmeHeader, parsed.signature.combined)
    if not eab and (header.jwk is None) == (header.kid is None):
        raise AcmeProblem("malformed", "The JWS header needs exactly one of jwk and kid")
    if not header.url:
        raise AcmeProblem("malformed", "The JWS header has no url")
    return ParsedJWS(parsed, header, parsed.payload, raw_protected)


def verify_signature(parsed: ParsedJWS, key: JWK) -> None:
    """Check the JWS signature with ``key``.

    :raises AcmeProblem: malformed when the signature does not verify.
    """
    try:
        valid = parsed.jws.verify(key)
    except (Error, ValueError, TypeError):
        valid = False
    if not valid:
        raise AcmeProblem("malformed", "The JWS signature is invalid")


def load_jwk(value: dict[str, Any] | JWK | None) -> JWK:
    """Turn a JWK from a header or payload into a josepy key, or badPublicKey."""
    if isinstance(value, JWK):
        jwk = value
    else:
        try:
            jwk = cast(JWK, JWK.from_json(value or {}))
        except (DeserializationError, ValueError, TypeError, KeyError):
            raise AcmeProblem("badPublicKey", "The JWK could not be read") from None
    if isinstance(jwk, JWKOct):
        raise AcmeProblem("badPublicKey", "Symmetric keys cannot identify an account")
    if isinstance(jwk, JWKRSA) and jwk.key.key_size < 2048:
        raise AcmeProblem("badPublicKey", "RSA account keys must have at least 2048 bits")
    return jwk


def thumbprint(jwk: JWK) -> str:
    """The RFC 7638 SHA-256 thumbprint, base64url, as key authorizations use it."""
    return b64encode(jwk.thumbprint()).decode()


def public_jwk_json(jwk: JWK) -> dict[str, Any]:
    """A public JWK as a plain JSON object."""
    result: dict[str, Any] = jwk.public_key().to_partial_json()
    return result
