"""Challenge validation without a network: digests, URLs, redirects, bodies and certificates."""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from yarl import URL

from acme_mt.config import ValidationSettings
from acme_mt.errors import AcmeProblem, ConfigError
from acme_mt.models import Identifier
from acme_mt.validation import Validator, txt_record_value
from acme_mt.validation.dns01 import check_txt_values, record_name
from acme_mt.validation.http01 import (
    bracket_ipv6,
    challenge_url,
    check_body,
    redirect_target,
)
from acme_mt.validation.tlsalpn01 import (
    ACME_IDENTIFIER_OID,
    check_certificate,
    client_context,
    server_name,
)

KEY_AUTHORIZATION = (
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
)
DNS_NAME = Identifier("dns", "www.example.test")
ALLOWED_PORTS = frozenset({80, 443, 5002})


def problem_of(excinfo: pytest.ExceptionInfo[AcmeProblem]) -> dict[str, object]:
    return excinfo.value.to_json()


def alpn_certificate(
    sans: list[x509.GeneralName],
    extension_der: bytes | None,
    *,
    critical: bool = True,
) -> bytes:
    """A self-signed certificate shaped like a tls-alpn-01 response, as DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls-alpn-01")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if extension_der is not None:
        extension = x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, extension_der)
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def acme_identifier(key_authorization: str = KEY_AUTHORIZATION) -> bytes:
    """The DER of the acmeIdentifier extension value (RFC 8737 §3)."""
    digest = hashlib.sha256(key_authorization.encode()).digest()
    der: bytes = core.OctetString(digest).dump()
    return der


# dns-01


def test_txt_record_value_is_base64url_sha256_without_padding() -> None:
    # SHA-256("abc") is FIPS 180-2's first test vector.
    assert txt_record_value("abc") == "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"


def test_record_name_prefixes_acme_challenge_label() -> None:
    assert record_name(Identifier("dns", "example.test.")) == "_acme-challenge.example.test"


def test_check_txt_values_one_match_among_several_passes() -> None:
    values = ["other", txt_record_value(KEY_AUTHORIZATION), "third"]
    check_txt_values("_acme-challenge.x.test", values, KEY_AUTHORIZATION)


def test_check_txt_values_none_is_unauthorized() -> None:
    with pytest.raises(AcmeProblem) as excinfo:
        check_txt_values("_acme-challenge.x.test", [], KEY_AUTHORIZATION)
    assert problem_of(excinfo) == {
        "type": "urn:ietf:params:acme:error:unauthorized",
        "detail": "DNS has no TXT record at _acme-challenge.x.test",
        "status": 403,
    }


def test_check_txt_values_only_wrong_ones_is_incorrect_response_quoting_them() -> None:
    values = [f"v{i}" for i in range(7)]
    with pytest.raises(AcmeProblem) as excinfo:
        check_txt_values("_acme-challenge.x.test", values, KEY_AUTHORIZATION)
    assert problem_of(excinfo) == {
        "type": "urn:ietf:params:acme:error:incorrectResponse",
        "detail": "the TXT records at _acme-challenge.x.test hold 'v0', 'v1', 'v2', 'v3', "
        "'v4' and 2 more, none of them the digest of the key authorization of this challenge",
        "status": 403,
    }


def test_check_txt_values_padded_digest_is_incorrect_response() -> None:
    with pytest.raises(AcmeProblem) as excinfo:
        check_txt_values("n", [txt_record_value(KEY_AUTHORIZATION) + "="], KEY_AUTHORIZATION)
    assert excinfo.value.type == "incorrectResponse"


# http-01


def test_challenge_url_ipv6_is_bracketed() -> None:
    url = challenge_url(Identifier("ip", "2001:db8::1"), 80, "tok")
    assert str(url) == "http://[2001:db8::1]/.well-known/acme-challenge/tok"
    assert bracket_ipv6("2001:db8::1") == "[2001:db8::1]"


def test_challenge_url_dns_name_on_configured_port() -> None:
    url = challenge_url(DNS_NAME, 5002, "tok")
    assert str(url) == "http://www.example.test:5002/.well-known/acme-challenge/tok"
    assert bracket_ipv6("www.example.test") == "www.example.test"


def test_redirect_target_relative_location_keeps_host_and_port() -> None:
    current = URL("http://www.example.test:5002/.well-known/acme-challenge/a")
    target = redirect_target(current, "/elsewhere/b?x=1#frag", ALLOWED_PORTS)
    assert str(target) == "http://www.example.test:5002/elsewhere/b?x=1"


def test_redirect_target_https_on_443_is_followed() -> None:
    current = URL("http://www.example.test/.well-known/acme-challenge/a")
    target = redirect_target(current, "https://other.example.test/a", ALLOWED_PORTS)
    assert (target.scheme, target.host, target.port) == ("https", "other.example.test", 443)


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://www.example.test:8081/a", "on port 8081; redirects may only go to ports 80"),
        ("ftp://www.example.test/a", "not an http or https URL"),
        ("http://www.example.test:99999/a", "an unusable Location"),
    ],
)
def test_redirect_target_refused_is_connection_problem(location: str, reason: str) -> None:
    current = URL("http://www.example.test/.well-known/acme-challenge/a")
    with pytest.raises(AcmeProblem) as excinfo:
        redirect_target(current, location, ALLOWED_PORTS)
    assert excinfo.value.type == "connection"
    assert reason in excinfo.value.detail


def test_check_body_trailing_whitespace_is_ignored() -> None:
    url = URL("http://x.test/")
    check_body(url, KEY_AUTHORIZATION.encode() + b"\r\n \t", KEY_AUTHORIZATION)


def test_check_body_leading_whitespace_is_incorrect_response() -> None:
    with pytest.raises(AcmeProblem) as excinfo:
        check_body(URL("http://x.test/a"), b" " + KEY_AUTHORIZATION.encode(), KEY_AUTHORIZATION)
    assert excinfo.value.type == "incorrectResponse"


def test_check_body_wrong_body_quotes_its_start() -> None:
    with pytest.raises(AcmeProblem) as excinfo:
        check_body(URL("http://x.test/a"), b"<html>" + b"x" * 100, KEY_AUTHORIZATION)
    assert problem_of(excinfo) == {
        "type": "urn:ietf:params:acme:error:incorrectResponse",
        "detail": "http://x.test/a served 106 bytes starting '<html>"
        + "x" * 58
        + "...', not the key authorization of this challenge",
        "status": 403,
    }


# tls-alpn-01


def test_server_name_of_ip_is_reverse_dns_name() -> None:
    assert server_name(Identifier("ip", "192.0.2.7")) == "7.2.0.192.in-addr.arpa"
    assert server_name(Identifier("ip", "2001:db8::1")).endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    assert server_name(DNS_NAME) == "www.example.test"


def test_client_context_offers_tls12_and_up_without_verification() -> None:
    context = client_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False


def test_check_certificate_dns_name_passes() -> None:
    der = alpn_certificate([x509.DNSName("WWW.example.test")], acme_identifier())
    check_certificate(der, DNS_NAME, KEY_AUTHORIZATION)


def test_check_certificate_ip_address_passes() -> None:
    address = ipaddress.ip_address("2001:db8::1")
    der = alpn_certificate([x509.IPAddress(address)], acme_identifier())
    check_certificate(der, Identifier("ip", "2001:db8::1"), KEY_AUTHORIZATION)


@pytest.mark.parametrize(
    ("sans", "extension_der", "critical", "detail"),
    [
        (
            [x509.DNSName("www.example.test")],
            acme_identifier(),
            False,
            "the acmeIdentifier extension is not critical",
        ),
        (
            [x509.DNSName("www.example.test")],
            acme_identifier("other.key-authorization"),
            True,
            "the acmeIdentifier extension holds "
            + hashlib.sha256(b"other.key-authorization").hexdigest()
            + ", not SHA-256 of the key authorization of this challenge",
        ),
        (
            [x509.DNSName("www.example.test")],
            core.Integer(5).dump(),
            True,
            "the acmeIdentifier extension is not a DER OCTET STRING",
        ),
        (
            [x509.DNSName("www.example.test")],
            acme_identifier() + b"\x00",
            True,
            "the acmeIdentifier extension is not a DER OCTET STRING",
        ),
        (
            [x509.DNSName("www.example.test")],
            None,
            True,
            "the certificate has no acmeIdentifier extension",
        ),
        (
            [x509.DNSName("www.example.test"), x509.DNSName("other.example.test")],
            acme_identifier(),
            True,
            "the certificate's subjectAltName must hold exactly www.example.test, "
            "but holds www.example.test, other.example.test",
        ),
        (
            [],
            acme_identifier(),
            True,
            "the certificate's subjectAltName must hold exactly www.example.test, but holds none",
        ),
    ],
)
def test_check_certificate_wrong_certificate_is_incorrect_response(
    sans: list[x509.GeneralName], extension_der: bytes | None, critical: bool, detail: str
) -> None:
    der = alpn_certificate(sans, extension_der, critical=critical)
    with pytest.raises(AcmeProblem) as excinfo:
        check_certificate(der, DNS_NAME, KEY_AUTHORIZATION)
    assert problem_of(excinfo) == {
        "type": "urn:ietf:params:acme:error:incorrectResponse",
        "detail": detail,
        "status": 403,
    }


def test_check_certificate_garbage_is_incorrect_response() -> None:
    with pytest.raises(AcmeProblem) as excinfo:
        check_certificate(b"\x30\x03\x02\x01\x01", DNS_NAME, KEY_AUTHORIZATION)
    assert excinfo.value.type == "incorrectResponse"
    assert excinfo.value.detail.startswith("the certificate cannot be parsed")


# the entry point


def test_validator_resolver_name_instead_of_address_is_config_error() -> None:
    with pytest.raises(ConfigError, match="dns_resolver must be an IP address"):
        Validator(ValidationSettings(dns_resolver="resolver.example.test:53"))


@pytest.mark.parametrize(
    ("challenge_type", "identifier", "kind", "detail"),
    [
        ("http-02", DNS_NAME, "malformed", "unknown challenge type 'http-02'"),
        (
            "http-01",
            Identifier("email", "a@example.test"),
            "unsupportedIdentifier",
            "cannot validate identifiers of type 'email'",
        ),
        (
            "http-01",
            Identifier("ip", "10.0.0.300"),
            "malformed",
            "'10.0.0.300' is not an IP address",
        ),
        (
            "dns-01",
            Identifier("ip", "192.0.2.1"),
            "unauthorized",
            "dns-01 cannot validate the ip identifier 192.0.2.1 (RFC 8738 §7)",
        ),
    ],
)
async def test_validator_refuses_unusable_request_before_any_lookup(
    challenge_type: str, identifier: Identifier, kind: str, detail: str
) -> None:
    # The resolver points at a port nothing answers on: any look-up would time out.
    settings = ValidationSettings(dns_resolver="127.0.0.1:9", timeout_seconds=0.5)
    validator = Validator(settings)
    try:
        with pytest.raises(AcmeProblem) as excinfo:
            await validator.validate(challenge_type, identifier, "tok", KEY_AUTHORIZATION)
    finally:
        await validator.close()
    assert (excinfo.value.type, excinfo.value.detail) == (kind, detail)
