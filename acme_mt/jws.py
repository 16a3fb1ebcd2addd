"""JWS request authentication (RFC 8555 §6.2-6.4), on top of josepy.

Every ACME POST is a flattened JWS whose protected header carries ``alg``,
``nonce``, ``url`` and exactly one of ``jwk`` or ``kid``. This module checks
that shape and the ACME rules; josepy supplies the algorithms (its
``JWASignature`` registry) and the keys (``JWK``). The signature is checked
over the protected header and payload exactly as the client encoded them
(RFC 7515 §5.2), so nothing is decoded twice or encoded again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from josepy.b64 import b64decode, b64encode
from josepy.errors import DeserializationError, Error
from josepy.jwa import JWASignature
from josepy.jwk import JWK, JWKRSA, JWKOct

from acme_mt.errors import AcmeProblem
from acme_mt.models import Account

#: RFC 8555 §6.2: asymmetric algorithms only. EdDSA waits for josepy to support it.
ALLOWED_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256")
EAB_ALGORITHMS = ("HS256", "HS384", "HS512")

JOSE_CONTENT_TYPE = "application/jose+json"

#: Protected header members that must be strings when present.
_STRING_MEMBERS = ("kid", "nonce", "url")


@dataclass(frozen=True)
class JwsHeader:
    """The protected header members ACME reads (RFC 8555 §6.2, §6.4, §6.5)."""

    alg: str
    jwk: dict[str, Any] | None
    kid: str | None
    nonce: str | None
    url: str | None


@dataclass(frozen=True)
class ParsedJWS:
    """A JWS whose shape is checked but whose signature is not yet verified."""

    header: JwsHeader
    payload: bytes
    signature: bytes
    #: RFC 7515 §5.2: the encoded protected header and payload, joined by a dot.
    signing_input: bytes

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
    protected, payload, signature = (obj.get(k) for k in ("protected", "payload", "signature"))
    if not (isinstance(protected, str) and isinstance(payload, str) and isinstance(signature, str)):
        raise AcmeProblem("malformed", "The JWS needs protected, payload and signature strings")

    header = _header(protected, eab)
    try:
        payload_bytes, signature_bytes = b64decode(payload), b64decode(signature)
        signing_input = f"{protected}.{payload}".encode("ascii")
    except (ValueError, TypeError):
        raise AcmeProblem("malformed", "The JWS payload or signature is not base64url") from None
    return ParsedJWS(header, payload_bytes, signature_bytes, signing_input)


def _header(protected: str, eab: bool) -> JwsHeader:
    try:
        members = json.loads(b64decode(protected))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise AcmeProblem("malformed", "The JWS protected header is not base64url JSON") from None
    if not isinstance(members, dict):
        raise AcmeProblem("malformed", "The JWS protected header must be a JSON object")

    allowed = EAB_ALGORITHMS if eab else ALLOWED_ALGORITHMS
    if members.get("alg") not in allowed:
        raise AcmeProblem("badSignatureAlgorithm", f"Accepted algorithms: {', '.join(allowed)}")
    if "crit" in members:
        # RFC 7515 §4.1.11: no extension is understood here, so none may be critical.
        raise AcmeProblem("malformed", "The JWS names critical extensions this server lacks")
    for name in _STRING_MEMBERS:
        if not isinstance(members.get(name, ""), str):
            raise AcmeProblem("malformed", f"The JWS header member {name} must be a string")
    jwk = members.get("jwk")
    if jwk is not None and not isinstance(jwk, dict):
        raise AcmeProblem("malformed", "The JWS header member jwk must be an object")

    header = JwsHeader(
        members["alg"], jwk, members.get("kid"), members.get("nonce"), members.get("url")
    )
    if not eab and (header.jwk is None) == (header.kid is None):
        raise AcmeProblem("malformed", "The JWS header needs exactly one of jwk and kid")
    if not header.url:
        raise AcmeProblem("malformed", "The JWS header has no url")
    return header


def signature_valid(parsed: ParsedJWS, key: JWK) -> bool:
    """Whether the JWS signature verifies with ``key`` under the header's algorithm."""
    try:
        algorithm = JWASignature.from_json(parsed.header.alg)
        return bool(algorithm.verify(key.key, parsed.signing_input, parsed.signature))
    except (Error, ValueError, TypeError, AttributeError):
        return False


def verify_signature(parsed: ParsedJWS, key: JWK) -> None:
    """Check the JWS signature with ``key``.

    :raises AcmeProblem: malformed when the signature does not verify.
    """
    if not signature_valid(parsed, key):
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


#: Parsed account keys by RFC 7638 thumbprint, shared by every tenant: a
#: thumbprint names exactly one key, so the entry can never be another's.
_ACCOUNT_KEYS: dict[str, JWK] = {}
ACCOUNT_KEY_CACHE_SIZE = 10_000


def account_key(account: Account) -> JWK:
    """The account's public key, decoded once per key rather than once per request.

    Decoding a JWK builds a cryptography key object (an EC point check, an
    RSA modulus), which costs as much as the rest of the look-up together.
    """
    jwk = _ACCOUNT_KEYS.get(account.thumbprint)
    if jwk is None:
        jwk = load_jwk(account.jwk)
        if len(_ACCOUNT_KEYS) >= ACCOUNT_KEY_CACHE_SIZE:
            _ACCOUNT_KEYS.clear()
        _ACCOUNT_KEYS[account.thumbprint] = jwk
    return jwk
