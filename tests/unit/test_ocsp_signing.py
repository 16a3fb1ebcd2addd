"""Delegated OCSP signers and signed responses (RFC 6960 §4.2, §4.2.2.2; RFC 8954)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from acme_mt.issuance import Issuer, create_root_ca, create_tenant_ca, new_serial
from acme_mt.issuance.ocsp import (
    CertStatus,
    OcspSigner,
    SingleAnswer,
    issue_ocsp_signer,
    issuer_hashes,
    load_ocsp_signer,
    sign_response,
    sign_responses,
)
from acme_mt.keystores.base import PROVIDER_PARTITION, KeyPartition
from acme_mt.keystores.file import FileKeyStore
from ocsp.request import parse_request
from tests.unit.test_ocsp_request import without_null_parameters

NOW = datetime.now(UTC).replace(microsecond=0)
PEM = serialization.Encoding.PEM


@dataclass
class Tenant:
    issuer: Issuer
    partition: KeyPartition
    signer: OcspSigner


@pytest.fixture
async def tenants(tmp_path: Path) -> tuple[Tenant, Tenant]:
    store = FileKeyStore(tmp_path / "keys", bytes(32))
    provider = await store.open_partition(PROVIDER_PARTITION, create=True)
    root = await create_root_ca(provider, "ec-p256", "Test Root")
    root_key = await provider.get("root")
    made = []
    for slug in ("tenant-a", "tenant-b"):
        partition = await store.open_partition(slug, create=True)
        ca = await create_tenant_ca(root_key, root, partition, slug, "ec-p256", "Test")
        issuer = Issuer(slug, ca, await partition.get("ca"), root, "http://localhost:8080")
        made.append(Tenant(issuer, partition, await issue_ocsp_signer(issuer, partition, NOW)))
    return made[0], made[1]


def answer(tenant: Tenant, serial: int, status: CertStatus, **extra: object) -> SingleAnswer:
    name_hash, key_hash = issuer_hashes(tenant.issuer.certificate, "sha1")
    values: dict[str, object] = {
        "hash_name": "sha1",
        "issuer_name_hash": name_hash,
        "issuer_key_hash": key_hash,
        "serial": serial,
        "status": status,
        "this_update": NOW,
        "next_update": NOW + timedelta(hours=24),
    }
    values.update(extra)
    return SingleAnswer(**values)  # type: ignore[arg-type]


def check_signature(der: bytes, signer: OcspSigner) -> ocsp.OCSPResponse:
    response = ocsp.load_der_ocsp_response(der)
    public_key = signer.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    algorithm = response.signature_hash_algorithm
    assert algorithm is not None
    public_key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    return response


async def test_signer_certificate_is_a_delegated_ocsp_responder(
    tenants: tuple[Tenant, Tenant],
) -> None:
    tenant, _ = tenants
    certificate = tenant.signer.certificate
    certificate.verify_directly_issued_by(tenant.issuer.certificate)
    extensions = certificate.extensions
    assert list(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.OCSP_SIGNING
    ]
    assert extensions.get_extension_for_class(x509.OCSPNoCheck).critical is False
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert certificate.not_valid_after_utc == NOW + timedelta(days=7)
    assert certificate.not_valid_before_utc == NOW - timedelta(hours=1)
    key = await tenant.partition.get(tenant.signer.key_label)
    assert key.public_key() == certificate.public_key()


async def test_load_signer_refuses_another_tenants_or_a_non_ocsp_certificate(
    tenants: tuple[Tenant, Tenant],
) -> None:
    a, b = tenants
    key_a = await a.partition.get(a.signer.key_label)
    loaded = load_ocsp_signer(a.issuer, a.signer.key_label, key_a, a.signer.certificate_der)
    assert loaded.certificate == a.signer.certificate
    with pytest.raises(ValueError):
        load_ocsp_signer(b.issuer, a.signer.key_label, key_a, a.signer.certificate_der)
    key_b = await b.partition.get(b.signer.key_label)
    with pytest.raises(ValueError):
        load_ocsp_signer(a.issuer, a.signer.key_label, key_b, a.signer.certificate_der)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.test")]), critical=False)
        .sign(key_a, hashes.SHA256())
    )
    leaf = await a.issuer.issue_leaf(
        csr, [("dns", "a.test")], NOW, NOW + timedelta(days=1), new_serial(), 0, True
    )
    with pytest.raises(ValueError):
        load_ocsp_signer(a.issuer, "leaf", key_a, leaf.public_bytes(serialization.Encoding.DER))


def test_issuer_hashes_match_what_clients_compute() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "hash test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    for algorithm in (hashes.SHA1(), hashes.SHA256()):
        request = ocsp.OCSPRequestBuilder().add_certificate(ca, ca, algorithm).build()
        expected = (request.issuer_name_hash, request.issuer_key_hash)
        assert issuer_hashes(ca, algorithm.name) == expected


async def test_presigned_responses_state_good_revoked_and_unknown(
    tenants: tuple[Tenant, Tenant],
) -> None:
    tenant, _ = tenants
    revoked_at = NOW - timedelta(minutes=5)
    answers = [
        answer(tenant, 11, CertStatus.GOOD),
        answer(tenant, 12, CertStatus.REVOKED, revoked_at=revoked_at, reason=1),
        answer(tenant, 13, CertStatus.UNKNOWN),
        answer(tenant, 14, CertStatus.REVOKED, revoked_at=revoked_at, reason=0),
    ]
    signed = await sign_responses(tenant.signer, answers)
    responses = [check_signature(der, tenant.signer) for der in signed]
    assert [r.serial_number for r in responses] == [11, 12, 13, 14]
    assert [r.certificate_status for r in responses] == [
        CertStatus.GOOD,
        CertStatus.REVOKED,
        CertStatus.UNKNOWN,
        CertStatus.REVOKED,
    ]
    assert responses[1].revocation_time_utc == revoked_at
    assert responses[1].revocation_reason == x509.ReasonFlags.key_compromise
    assert responses[3].revocation_reason is None
    for response in responses:
        assert response.responder_key_hash == tenant.signer.key_hash
        assert response.certificates == [tenant.signer.certificate]
        assert response.this_update_utc == NOW
        assert response.next_update_utc == NOW + timedelta(hours=24)


async def test_response_does_not_verify_with_another_tenants_signer(
    tenants: tuple[Tenant, Tenant],
) -> None:
    a, b = tenants
    der = (await sign_responses(a.signer, [answer(a, 5, CertStatus.GOOD)]))[0]
    with pytest.raises(InvalidSignature):
        check_signature(der, b.signer)


async def test_single_response_echoes_the_nonce(tenants: tuple[Tenant, Tenant]) -> None:
    tenant, _ = tenants
    der = await sign_response(tenant.signer, [answer(tenant, 7, CertStatus.GOOD)], b"n" * 16)
    response = check_signature(der, tenant.signer)
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"n" * 16


async def test_combined_response_names_every_certificate_and_verifies_in_openssl(
    tenants: tuple[Tenant, Tenant], tmp_path: Path
) -> None:
    tenant, _ = tenants
    answers = [
        answer(tenant, 21, CertStatus.GOOD),
        answer(tenant, 22, CertStatus.REVOKED, revoked_at=NOW, reason=4),
        answer(tenant, 23, CertStatus.UNKNOWN),
    ]
    der = await sign_response(tenant.signer, answers, b"\x01\x02\x03")
    check_signature(der, tenant.signer)

    parsed = asn1_ocsp.OCSPResponse.load(der)
    data = parsed["response_bytes"]["response"].parsed["tbs_response_data"]
    statuses = [
        (r["cert_id"]["serial_number"].native, r["cert_status"].name) for r in data["responses"]
    ]
    assert statuses == [(21, "good"), (22, "revoked"), (23, "unknown")]
    reason = data["responses"][1]["cert_status"].chosen["revocation_reason"].native
    assert reason == "superseded"
    nonce = data["response_extensions"][0]
    assert nonce["extn_id"].native == "nonce"
    assert nonce["extn_value"].contents == b"\x04\x03\x01\x02\x03"

    response_file = tmp_path / "combined.der"
    response_file.write_bytes(der)
    trust = tmp_path / "trust.pem"
    trust.write_text(tenant.issuer.chain_pem())
    result = subprocess.run(
        ["openssl", "ocsp", "-respin", str(response_file), "-CAfile", str(trust), "-no_nonce"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Response verify OK" in result.stderr, result.stderr


async def test_cert_id_without_null_parameters_is_echoed_byte_for_byte(
    tenants: tuple[Tenant, Tenant],
) -> None:
    tenant, _ = tenants
    cert = parse_request(without_null_parameters(9)).certs[0]
    odd = answer(tenant, 9, CertStatus.GOOD, cert_id_der=cert.cert_id_der)
    der = await sign_response(tenant.signer, [odd])
    check_signature(der, tenant.signer)
    data = asn1_ocsp.OCSPResponse.load(der)["response_bytes"]["response"].parsed
    assert data["tbs_response_data"]["responses"][0]["cert_id"].dump() == cert.cert_id_der
