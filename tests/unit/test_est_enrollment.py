"""EST enrollment in the registration authority (RFC 7030 §4.2, §4.4): policy,
records, audit, client authentication and credentials, with real SQLite stores
and file key stores in a temporary data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from acme_mt.app import Services, open_services
from acme_mt.authority.enrollment import (
    EnrollmentDenied,
    EnrollmentRefused,
    EnrollmentService,
    create_credential,
    hash_password,
    requested_names,
    revoke_credential,
    verify_password,
)
from acme_mt.config import load_settings
from acme_mt.models import CertificateStatus, utcnow
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.lifecycle import onboard_tenant

STRICT_POLICY = {
    "allowed_suffixes": ["example.com"],
    "max_identifiers": 2,
    "key_types": ["ec-p256", "rsa-2048"],
    "max_validity_days": 30,
}

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass
class World:
    services: Services
    enrollment: EnrollmentService
    open: TenantContext
    strict: TenantContext


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = load_settings(None, str(tmp_path), environ={})
    services = await open_services(settings)
    await onboard_tenant(
        settings,
        services.registry,
        services.stores,
        services.keystore,
        services.provider,
        "strict",
        STRICT_POLICY,
    )
    tenants = [await services.tenants.resolve(slug) for slug in ("default", "strict")]
    assert tenants[0] is not None and tenants[1] is not None
    try:
        yield World(services, services.authority.enrollment, tenants[0], tenants[1])
    finally:
        await services.close()


def make_csr(
    names: list[str],
    *,
    common_name: str | None = None,
    key: Key | None = None,
    extra_san: list[x509.GeneralName] | None = None,
) -> x509.CertificateSigningRequest:
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = [] if common_name is None else [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names] + (extra_san or [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key, hashes.SHA256())


def with_broken_signature(csr: x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the ECDSA signature's last INTEGER
    return x509.load_der_x509_csr(bytes(der))


async def events(tenant: TenantContext) -> list[tuple[str, dict[str, object], str]]:
    return [(r.event, r.data, r.actor) for r in await tenant.store.list_audit()]


def test_hash_password_verifies_only_that_password() -> None:
    encoded = hash_password("correct horse")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsf", encoded)


@pytest.mark.parametrize("encoded", ["", "plain", "md5$1$2$3$4$5", "scrypt$x$8$1$AA==$AA=="])
def test_verify_password_malformed_hash_is_false(encoded: str) -> None:
    assert not verify_password("anything", encoded)


def test_requested_names_keeps_san_order_then_adds_cn() -> None:
    csr = make_csr(["b.example.com", "A.example.com", "b.example.com"], common_name="c.example.com")
    assert requested_names(csr) == [
        ("dns", "b.example.com"),
        ("dns", "A.example.com"),
        ("dns", "c.example.com"),
    ]


def test_requested_names_email_san_is_refused() -> None:
    csr = make_csr(["a.example.com"], extra_san=[x509.RFC822Name("me@example.com")])
    with pytest.raises(EnrollmentRefused, match="may hold only DNS names and IPs"):
        requested_names(csr)


async def test_enroll_issues_an_est_record_with_intent_and_outcome(world: World) -> None:
    tenant = world.strict
    csr = make_csr(["dev.example.com"], common_name="dev.example.com")
    issued: list[tuple[str, str]] = []
    world.services.events.on_issued(lambda tenant_id, serial: issued.append((tenant_id, serial)))

    certificate = await world.enrollment.enroll(tenant, csr, "est-credential:abc")

    certificate.verify_directly_issued_by(tenant.issuer.certificate)
    serial = format(certificate.serial_number, "x")
    record = await tenant.store.get_certificate(serial)
    assert record is not None
    assert (record.status, record.channel, record.account_id, record.order_id) == (
        CertificateStatus.VALID,
        "est",
        None,
        None,
    )
    assert record.der == certificate.public_bytes(serialization.Encoding.DER)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime.days == 30
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dev.example.com"]
    assert issued == [(tenant.id, serial)]
    audit = [e for e in await events(tenant) if e[0].startswith("certificate.")]
    assert audit == [
        (
            "certificate.signing",
            {
                "serial": serial,
                "channel": "est",
                "operation": "simpleenroll",
                "names": ["dev.example.com"],
            },
            "est-credential:abc",
        ),
        (
            "certificate.issued",
            {"serial": serial, "channel": "est", "operation": "simpleenroll"},
            "est-credential:abc",
        ),
    ]


@pytest.mark.parametrize(
    ("csr_args", "message"),
    [
        (
            {"names": ["dev.example.org"]},
            "dev.example.org: policy allowed_suffixes permits only names under example.com",
        ),
        (
            {"names": ["a.example.com", "b.example.com", "c.example.com"]},
            "policy max_identifiers allows at most 2 names; the CSR asks for 3",
        ),
        (
            {"names": ["dev.example.com"], "key": "p384"},
            "policy key_types allows ec-p256, rsa-2048; the CSR key is ec-p384",
        ),
        ({"names": ["*.example.com"]}, "*.example.com: wildcard names are not issued over EST"),
        ({"names": []}, "the CSR names nothing: put DNS names in its subjectAltName"),
        ({"names": ["dev.example.com"], "broken": True}, "the CSR's signature does not verify"),
    ],
)
async def test_enroll_against_policy_is_refused_and_records_nothing(
    world: World, csr_args: dict[str, object], message: str
) -> None:
    key = ec.generate_private_key(ec.SECP384R1()) if csr_args.get("key") == "p384" else None
    names = csr_args["names"]
    assert isinstance(names, list)
    csr = make_csr(names, key=key)
    if csr_args.get("broken"):
        csr = with_broken_signature(csr)
    before = await events(world.strict)

    with pytest.raises(EnrollmentRefused) as caught:
        await world.enrollment.enroll(world.strict, csr, "est-credential:abc")

    assert caught.value.detail == message
    assert await events(world.strict) == before


async def test_reenroll_with_same_subject_and_san_issues_a_new_serial(world: World) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(["dev.example.com"], common_name="dev.example.com", key=key)
    current = await world.enrollment.enroll(world.strict, csr, "a")

    renewed = await world.enrollment.reenroll(world.strict, csr, current, "b")

    assert renewed.serial_number != current.serial_number
    assert renewed.subject == current.subject
    signing = [e for e in await events(world.strict) if e[0] == "certificate.signing"]
    assert signing[-1][1]["replaces"] == format(current.serial_number, "x")


@pytest.mark.parametrize(
    ("names", "common_name", "message"),
    [
        (["dev.example.com"], "other.example.com", "subject differs"),
        (["dev.example.com", "www.example.com"], "dev.example.com", "subjectAltName differs"),
    ],
)
async def test_reenroll_with_other_names_is_refused(
    world: World, names: list[str], common_name: str, message: str
) -> None:
    current = await world.enrollment.enroll(
        world.strict, make_csr(["dev.example.com"], common_name="dev.example.com"), "a"
    )
    with pytest.raises(EnrollmentRefused, match=message):
        await world.enrollment.reenroll(
            world.strict, make_csr(names, common_name=common_name), current, "b"
        )


async def test_authenticate_certificate_checks_issuer_record_and_status(world: World) -> None:
    csr = make_csr(["dev.example.com"])
    certificate = await world.enrollment.enroll(world.strict, csr, "a")
    der = certificate.public_bytes(serialization.Encoding.DER)

    assert await world.enrollment.authenticate_certificate(world.strict, der) == certificate
    with pytest.raises(EnrollmentDenied, match="not issued by this CA"):
        await world.enrollment.authenticate_certificate(world.open, der)

    serial = format(certificate.serial_number, "x")
    assert await world.strict.store.revoke_certificate(serial, 1, utcnow())
    with pytest.raises(EnrollmentDenied, match="the client certificate is revoked"):
        await world.enrollment.authenticate_certificate(world.strict, der)


async def test_authenticate_password_per_tenant_until_revoked(world: World) -> None:
    credential, password = await create_credential(world.strict.store)
    enrollment = world.enrollment

    actor = await enrollment.authenticate_password(world.strict, credential.username, password)
    assert actor == f"est-credential:{credential.id}"
    # The second check is served from the cache of proven passwords.
    assert await enrollment.authenticate_password(world.strict, credential.username, password)
    with pytest.raises(EnrollmentDenied):
        await enrollment.authenticate_password(world.strict, credential.username, password + "x")
    with pytest.raises(EnrollmentDenied):
        await enrollment.authenticate_password(world.open, credential.username, password)

    assert await revoke_credential(world.strict.store, credential.id)
    assert not await revoke_credential(world.strict.store, credential.id)
    with pytest.raises(EnrollmentDenied):
        await enrollment.authenticate_password(world.strict, credential.username, password)
    kinds = [e[0] for e in await events(world.strict) if e[0].startswith("est.")]
    assert kinds == ["est.credential.created", "est.credential.revoked"]


async def test_server_key_follows_the_csr_key_type_when_allowed(world: World) -> None:
    csr = make_csr(["dev.example.com"], key=rsa.generate_private_key(65537, 2048))
    key, certificate = await world.enrollment.enroll_server_key(world.strict, csr, "a")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert certificate.public_key() == key.public_key()


async def test_server_key_falls_back_to_the_first_allowed_type(world: World) -> None:
    csr = make_csr(["dev.example.com"], key=ec.generate_private_key(ec.SECP384R1()))
    key, certificate = await world.enrollment.enroll_server_key(world.strict, csr, "a")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert certificate.public_key() == key.public_key()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dev.example.com"]


async def test_server_key_with_a_broken_csr_signature_is_refused(world: World) -> None:
    csr = with_broken_signature(make_csr(["dev.example.com"]))
    with pytest.raises(EnrollmentRefused, match="signature does not verify"):
        await world.enrollment.enroll_server_key(world.strict, csr, "a")
