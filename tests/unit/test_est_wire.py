"""EST bodies on the wire (RFC 7030 §4, RFC 8951): base64 in every accepted form,
certs-only PKCS#7, the serverkeygen multipart answer and the CsrAttrs DER."""

from __future__ import annotations

import base64
import email
import email.policy
import textwrap
from datetime import UTC, datetime

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from acme_mt.tenancy.policy import TenantPolicy
from est.csrattrs import CsrAttrs, csr_attributes
from est.wire import (
    MAX_BODY_BYTES,
    EstError,
    base64_response,
    certs_only,
    decode_base64,
    multipart_response,
    read_csr,
)


def make_csr(name: str = "device.example.com") -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def self_signed(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2025, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2035, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def csr_der() -> bytes:
    return make_csr().public_bytes(serialization.Encoding.DER)


def test_decode_base64_one_line_returns_der(csr_der: bytes) -> None:
    assert decode_base64(base64.b64encode(csr_der)) == csr_der


def test_decode_base64_wrapped_with_crlf_returns_der(csr_der: bytes) -> None:
    wrapped = "\r\n".join(textwrap.wrap(base64.b64encode(csr_der).decode(), 64)) + "\r\n"
    assert decode_base64(wrapped.encode()) == csr_der


def test_decode_base64_raw_der_passes_through(csr_der: bytes) -> None:
    assert decode_base64(csr_der) == csr_der


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the request body is empty"),
        (b" \r\n", "the request body is empty"),
        (b"not base64 at all!", "the request body is not valid base64"),
        (b"QUJD=x", "the request body is not valid base64"),
    ],
)
def test_decode_base64_bad_body_is_400(body: bytes, message: str) -> None:
    with pytest.raises(EstError) as caught:
        decode_base64(body)
    assert (caught.value.status, caught.value.message) == (400, message)


@pytest.mark.parametrize("label", ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])
def test_read_csr_pem_armour_is_accepted(csr_der: bytes, label: str) -> None:
    body = "\n".join(textwrap.wrap(base64.b64encode(csr_der).decode(), 64))
    pem = f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"
    assert read_csr(pem.encode()).public_bytes(serialization.Encoding.DER) == csr_der


def test_read_csr_base64_of_something_else_is_400() -> None:
    with pytest.raises(EstError) as caught:
        read_csr(base64.b64encode(b"\x30\x03\x02\x01\x05"))
    assert caught.value.status == 400
    assert caught.value.message == "the request body is not a PKCS#10 certificate request"


def test_certs_only_round_trips_in_order() -> None:
    first, second = self_signed("first.example"), self_signed("second.example")
    loaded = pkcs7.load_der_pkcs7_certificates(certs_only([first, second]))
    assert sorted(c.subject.rfc4514_string() for c in loaded) == [
        "CN=first.example",
        "CN=second.example",
    ]


def test_base64_response_is_one_line_with_transfer_encoding() -> None:
    response = base64_response(b"\x30" * 200, "application/csrattrs")
    assert response.headers["Content-Type"] == "application/csrattrs"
    assert response.headers["Content-Transfer-Encoding"] == "base64"
    assert isinstance(response.body, bytes)
    assert b"\n" not in response.body
    assert base64.b64decode(response.body) == b"\x30" * 200


def test_multipart_response_holds_both_parts_in_order() -> None:
    response = multipart_response(
        [("application/pkcs8", b"key bytes"), ("application/pkcs7-mime", b"cert bytes")]
    )
    assert isinstance(response.body, bytes)
    raw = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode() + response.body
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    parts = list(message.iter_parts())  # type: ignore[attr-defined]
    assert [p.get_content_type() for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
    assert [p["Content-Transfer-Encoding"] for p in parts] == ["base64", "base64"]
    assert [p.get_payload(decode=True) for p in parts] == [b"key bytes", b"cert bytes"]


def test_est_error_response_is_plain_text() -> None:
    response = EstError(401, "who are you", {"WWW-Authenticate": 'Basic realm="x"'}).response()
    assert response.status == 401
    assert response.content_type == "text/plain"
    assert response.text == "who are you\n"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="x"'


def test_max_body_is_64_kib() -> None:
    assert MAX_BODY_BYTES == 65536


def _decoded(der: bytes) -> list[tuple[str, list[str]]]:
    """CsrAttrs as (oid, [value oids]) pairs; a bare OID has no values."""
    items = []
    for item in CsrAttrs.load(der):
        if item.name == "oid":
            items.append((item.chosen.dotted, []))
        else:
            values = [core.ObjectIdentifier.load(v.dump()).dotted for v in item.chosen["values"]]
            items.append((item.chosen["type"].dotted, values))
    return items


def test_csr_attributes_name_allowed_curves_and_rsa() -> None:
    policy = TenantPolicy(key_types=("ec-p256", "rsa-2048", "ec-p384"))
    profile = policy.profile(None)
    assert profile is not None
    assert _decoded(csr_attributes(profile)) == [
        ("1.2.840.10045.2.1", ["1.3.132.0.34", "1.2.840.10045.3.1.7"]),
        ("1.2.840.10045.4.3.2", []),
        ("1.2.840.113549.1.1.1", []),
        ("1.2.840.113549.1.1.11", []),
    ]


def test_csr_attributes_rsa_only_has_no_curve() -> None:
    profile = TenantPolicy(key_types=("rsa-3072",)).profile(None)
    assert profile is not None
    assert _decoded(csr_attributes(profile)) == [
        ("1.2.840.113549.1.1.1", []),
        ("1.2.840.113549.1.1.11", []),
    ]
