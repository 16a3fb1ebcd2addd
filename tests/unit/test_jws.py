"""Parsing and verifying flattened JWS requests (RFC 8555 §6.2, RFC 7515)."""

from __future__ import annotations

import json
from typing import Any

import josepy as jose
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from acme_mt.errors import AcmeProblem
from acme_mt.jws import parse_jws, signature_valid, verify_signature

URL = "https://localhost:8443/default/acme/new-order"
KID = "https://localhost:8443/default/acme/acct/abc"


def b64(value: bytes) -> str:
    return jose.b64encode(value).decode()


def signed(
    members: dict[str, Any], payload: bytes = b"{}", key: jose.JWK | None = None
) -> dict[str, str]:
    """A flattened JWS over ``members`` as given, signed with ES256 unless ``key`` is HMAC."""
    key = key or jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    protected, encoded = b64(json.dumps(members).encode()), b64(payload)
    algorithm = jose.HS256 if isinstance(key, jose.JWKOct) else jose.ES256
    signature = algorithm.sign(key.key, f"{protected}.{encoded}".encode())
    return {"protected": protected, "payload": encoded, "signature": b64(signature)}


def kid_header(**extra: Any) -> dict[str, Any]:
    return {"alg": "ES256", "kid": KID, "nonce": "n1", "url": URL, **extra}


def problem(body: dict[str, Any], *, eab: bool = False) -> str:
    with pytest.raises(AcmeProblem) as raised:
        parse_jws(json.dumps(body).encode(), eab=eab)
    return raised.value.type


def test_a_kid_request_parses_and_verifies_with_the_signers_key() -> None:
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    body = signed(kid_header(), b'{"identifiers": []}', key)

    parsed = parse_jws(json.dumps(body).encode())

    assert (parsed.header.kid, parsed.header.nonce, parsed.header.url) == (KID, "n1", URL)
    assert parsed.payload_json() == {"identifiers": []}
    verify_signature(parsed, key.public_key())


def test_another_key_or_a_changed_payload_does_not_verify() -> None:
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    other = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    body = signed(kid_header(), b"{}", key)
    changed = {**body, "payload": b64(b'{"x": 1}')}

    assert not signature_valid(parse_jws(body), other.public_key())
    assert not signature_valid(parse_jws(changed), key.public_key())
    with pytest.raises(AcmeProblem) as raised:
        verify_signature(parse_jws(changed), key.public_key())
    assert raised.value.type == "malformed"


def test_an_algorithm_that_does_not_fit_the_key_is_invalid_not_an_error() -> None:
    key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    body = signed(kid_header(alg="RS256"), b"{}", key)

    assert not signature_valid(parse_jws(body), key.public_key())


def test_external_account_binding_verifies_with_the_mac_key() -> None:
    mac = jose.JWKOct(key=b"k" * 32)
    body = signed({"alg": "HS256", "kid": "eab-1", "url": URL}, b"{}", mac)

    parsed = parse_jws(body, eab=True)

    assert signature_valid(parsed, mac)
    assert not signature_valid(parsed, jose.JWKOct(key=b"j" * 32))


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        (kid_header(alg="HS256"), "badSignatureAlgorithm"),
        (kid_header(alg="none"), "badSignatureAlgorithm"),
        ({"alg": "ES256", "nonce": "n1", "url": URL}, "malformed"),
        (kid_header(jwk={"kty": "EC"}), "malformed"),
        (kid_header(crit=["b64"], b64=False), "malformed"),
        (kid_header(kid=7), "malformed"),
        (kid_header(nonce=["n1"]), "malformed"),
        ({"alg": "ES256", "jwk": "key", "nonce": "n1", "url": URL}, "malformed"),
        (kid_header(url=""), "malformed"),
    ],
)
def test_a_header_of_the_wrong_shape_is_refused(members: dict[str, Any], expected: str) -> None:
    assert problem(signed(members)) == expected


def test_a_body_that_is_not_a_flattened_jws_is_malformed() -> None:
    body = signed(kid_header())

    assert problem({**body, "signature": 5}) == "malformed"
    assert problem({**body, "header": {}}) == "malformed"
    assert problem({"signatures": [body], "payload": body["payload"]}) == "malformed"
    assert problem({**body, "protected": b64(b"[1]")}) == "malformed"
    assert problem({**body, "signature": "\u00e9"}) == "malformed"
    with pytest.raises(AcmeProblem):
        parse_jws(b"not json")
