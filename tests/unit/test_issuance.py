"""Issuance: root, tenant CAs and leaves with real keys, checked by cryptography and openssl."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import utils, x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from acme_mt.errors import KeyStoreError
from acme_mt.issuance import (
    Issuer,
    create_root_ca,
    create_tenant_ca,
    create_tls_certificate,
    new_serial,
    shard_for_serial,
)
from acme_mt.keystores.base import PROVIDER_PARTITION, SigningKey
from acme_mt.keystores.file import FileKeyStore

HTTP_URL = "http://localhost:8080"
KEK = bytes(32)


@dataclass
class Pki:
    root_key: SigningKey
    root: x509.Certificate
    tenant_a: Issuer
    tenant_b: Issuer


async def _make_pki(keys_dir: Path, ca_key_type: str = "ec-p256") -> Pki:
    store = FileKeyStore(keys_dir, KEK)
    provider = await store.open_partition(PROVIDER_PARTITION, create=True)
    root = await create_root_ca(provider, "ec-p384", "Test Provider Root")
    root_key = await provider.get("root")
    issuers = []
    for slug in ("tenant-a", "tenant-b"):
        partition = await store.open_partition(slug, create=True)
        ca = await create_tenant_ca(root_key, root, partition, slug, ca_key_type, "Test")
        issuers.append(Issuer(slug, ca, await partition.get("ca"), root, HTTP_URL))
    return Pki(root_key, root, issuers[0], issuers[1])


@pytest.fixture
async def pki(tmp_path: Path) -> Pki:
    return await _make_pki(tmp_path / "keys")


def _csr(
    key: Any,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    cn: str | None = None,
) -> x509.CertificateSigningRequest:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return builder.sign(key, None)
    return builder.sign(key, hashes.SHA256())


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def _leaf(
    issuer: Issuer,
    csr: x509.CertificateSigningRequest,
    sans: list[tuple[str, str]],
    *,
    shard: int = 0,
    ocsp: bool = True,
) -> x509.Certificate:
    now = datetime.now(UTC).replace(microsecond=0)
    return await issuer.issue_leaf(
        csr, sans, now, now + timedelta(days=90), new_serial(), shard, ocsp
    )


def _ext(cert: x509.Certificate, kind: type[Any]) -> x509.Extension[Any]:
    return cert.extensions.get_extension_for_class(kind)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# Root and tenant CA profiles.


async def test_root_ca_profile(pki: Pki) -> None:
    root = pki.root
    basic = _ext(root, x509.BasicConstraints)
    usage = _ext(root, x509.KeyUsage)

    root.verify_directly_issued_by(root)
    assert root.subject == root.issuer
    assert root.subject.rfc4514_string() == "CN=Test Provider Root"
    assert basic.critical and basic.value.ca and basic.value.path_length is None
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = _ext(root, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(pki.root_key.public_key())
    assert isinstance(root.signature_hash_algorithm, hashes.SHA384)
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=20 * 365) <= lifetime <= timedelta(days=20 * 366)


async def test_root_key_label_cannot_be_made_twice(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path, KEK)
    provider = await store.open_partition(PROVIDER_PARTITION, create=True)
    await create_root_ca(provider, "ec-p256", "Root")

    with pytest.raises(KeyStoreError, match="already exists"):
        await create_root_ca(provider, "ec-p256", "Root")


async def test_tenant_ca_profile(pki: Pki) -> None:
    ca = pki.tenant_a.certificate
    basic = _ext(ca, x509.BasicConstraints)
    usage = _ext(ca, x509.KeyUsage)
    root_ski = _ext(pki.root, x509.SubjectKeyIdentifier).value

    ca.verify_directly_issued_by(pki.root)
    assert ca.subject.rfc4514_string() == "CN=Test tenant-a CA"
    assert ca.issuer == pki.root.subject
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert _ext(ca, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski.digest
    assert _ext(ca, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        pki.tenant_a.key.public_key()
    )
    assert ca.not_valid_after_utc <= pki.root.not_valid_after_utc
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert timedelta(days=10 * 365) <= lifetime <= timedelta(days=10 * 366)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA384)  # signed by the P-384 root


async def test_tenant_ca_with_http_url_points_at_root_certificate_and_crl(
    tmp_path: Path, pki: Pki
) -> None:
    partition = await FileKeyStore(tmp_path / "other", KEK).open_partition("t", create=True)
    ca = await create_tenant_ca(
        pki.root_key, pki.root, partition, "t", "ec-p256", "Test", http_url=HTTP_URL + "/"
    )

    access = _ext(ca, x509.AuthorityInformationAccess).value
    points = _ext(ca, x509.CRLDistributionPoints).value
    assert [(a.access_method, a.access_location.value) for a in access] == [
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{HTTP_URL}/root.crt")
    ]
    assert [p.full_name[0].value for p in points if p.full_name] == [f"{HTTP_URL}/root.crl"]


async def test_tenant_ca_refuses_root_key_of_another_certificate(tmp_path: Path, pki: Pki) -> None:
    partition = await FileKeyStore(tmp_path / "other", KEK).open_partition("t", create=True)

    with pytest.raises(ValueError, match="does not match"):
        await create_tenant_ca(pki.tenant_b.key, pki.root, partition, "t", "ec-p256", "Test")
    assert list((tmp_path / "other" / "t").iterdir()) == []


# Leaves.


async def test_leaf_chain_verifies_root_to_tenant_ca_to_leaf(pki: Pki) -> None:
    leaf = await _leaf(pki.tenant_a, _csr(_p256(), ("a.example",)), [("dns", "a.example")])

    leaf.verify_directly_issued_by(pki.tenant_a.certificate)
    pki.tenant_a.certificate.verify_directly_issued_by(pki.root)


async def test_tenant_a_ca_does_not_verify_tenant_b_leaf(pki: Pki) -> None:
    leaf = await _leaf(pki.tenant_b, _csr(_p256(), ("b.example",)), [("dns", "b.example")])

    leaf.verify_directly_issued_by(pki.tenant_b.certificate)
    with pytest.raises((ValueError, InvalidSignature)):
        leaf.verify_directly_issued_by(pki.tenant_a.certificate)


async def test_leaf_profile_without_cn(pki: Pki) -> None:
    issuer = pki.tenant_a
    csr = _csr(_p256(), ("Www.Example.org", "example.org"))
    now = datetime.now(UTC).replace(microsecond=0)
    serial = new_serial()
    leaf = await issuer.issue_leaf(
        csr,
        [("dns", "Www.Example.org"), ("dns", "example.org")],
        now,
        now + timedelta(days=30),
        serial,
        5,
        True,
    )

    san = _ext(leaf, x509.SubjectAlternativeName)
    basic = _ext(leaf, x509.BasicConstraints)
    usage = _ext(leaf, x509.KeyUsage)
    access = _ext(leaf, x509.AuthorityInformationAccess).value
    points = _ext(leaf, x509.CRLDistributionPoints).value
    ca_ski = _ext(issuer.certificate, x509.SubjectKeyIdentifier).value

    assert leaf.subject == x509.Name([])
    assert san.critical  # RFC 5280 §4.2.1.6: empty subject
    assert san.value.get_values_for_type(x509.DNSName) == ["Www.Example.org", "example.org"]
    assert leaf.serial_number == serial
    assert leaf.not_valid_before_utc == now
    assert leaf.not_valid_after_utc == now + timedelta(days=30)
    assert leaf.issuer == issuer.certificate.subject
    assert _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski.digest
    assert _ext(leaf, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        csr.public_key()
    )
    assert basic.critical and not basic.value.ca
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_encipherment and not usage.value.key_cert_sign
    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert [(a.access_method, a.access_location.value) for a in access] == [
        (AuthorityInformationAccessOID.OCSP, f"{HTTP_URL}/tenant-a/ocsp"),
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{HTTP_URL}/tenant-a/ca.crt"),
    ]
    assert [p.full_name[0].value for p in points if p.full_name] == [
        f"{HTTP_URL}/tenant-a/crl/5.crl"
    ]
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_leaf_keeps_csr_subject_when_its_cn_is_issued(pki: Pki) -> None:
    csr = _csr(_p256(), ("a.example", "b.example"), cn="A.example")

    leaf = await _leaf(pki.tenant_a, csr, [("dns", "a.example"), ("dns", "b.example")])

    assert leaf.subject == csr.subject
    assert not _ext(leaf, x509.SubjectAlternativeName).critical


async def test_leaf_drops_subject_when_cn_is_not_issued(pki: Pki) -> None:
    csr = _csr(_p256(), ("a.example",), cn="other.example")

    leaf = await _leaf(pki.tenant_a, csr, [("dns", "a.example")])

    assert leaf.subject == x509.Name([])


async def test_leaf_with_ip_identifier_and_ip_cn(pki: Pki) -> None:
    csr = _csr(_p256(), ips=("192.0.2.7", "2001:db8::1"), cn="192.0.2.7")

    leaf = await _leaf(pki.tenant_a, csr, [("ip", "192.0.2.7"), ("ip", "2001:db8:0::1")])

    assert _ext(leaf, x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    assert leaf.subject == csr.subject


async def test_leaf_for_rsa_key_adds_key_encipherment(pki: Pki) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    leaf = await _leaf(pki.tenant_a, _csr(key, ("a.example",)), [("dns", "a.example")])

    usage = _ext(leaf, x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment


async def test_leaf_without_ocsp_has_only_ca_issuers(pki: Pki) -> None:
    leaf = await _leaf(
        pki.tenant_a, _csr(_p256(), ("a.example",)), [("dns", "a.example")], ocsp=False
    )

    access = _ext(leaf, x509.AuthorityInformationAccess).value
    assert [a.access_method for a in access] == [AuthorityInformationAccessOID.CA_ISSUERS]


async def test_leaf_of_p384_ca_is_signed_with_sha384(tmp_path: Path) -> None:
    pki = await _make_pki(tmp_path, ca_key_type="ec-p384")

    leaf = await _leaf(pki.tenant_a, _csr(_p256(), ("a.example",)), [("dns", "a.example")])

    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)
    leaf.verify_directly_issued_by(pki.tenant_a.certificate)


async def test_leaf_of_rsa_ca_is_signed_with_sha256(tmp_path: Path) -> None:
    pki = await _make_pki(tmp_path, ca_key_type="rsa-2048")

    leaf = await _leaf(pki.tenant_a, _csr(_p256(), ("a.example",)), [("dns", "a.example")])

    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    leaf.verify_directly_issued_by(pki.tenant_a.certificate)


async def test_leaf_with_custom_extended_key_usage(pki: Pki) -> None:
    now = datetime.now(UTC)
    leaf = await pki.tenant_a.issue_leaf(
        _csr(_p256(), ("a.example",)),
        [("dns", "a.example")],
        now,
        now + timedelta(days=1),
        new_serial(),
        0,
        True,
        extended_key_usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )

    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.mark.parametrize(
    ("sans", "days", "serial", "message"),
    [
        ([], 1, 1, "at least one identifier"),
        ([("email", "a@example.org")], 1, 1, "unsupported identifier type"),
        ([("dns", "a.example")], 1, 0, "serial must be positive"),
        ([("dns", "a.example")], 1, 1 << 159, "serial must be positive"),
        ([("dns", "a.example")], 0, 1, "must come after"),
        ([("dns", "a.example")], 11 * 366, 1, "must not pass the issuing CA's expiry"),
    ],
)
async def test_issue_leaf_refuses_bad_arguments(
    pki: Pki, sans: list[tuple[str, str]], days: int, serial: int, message: str
) -> None:
    now = datetime.now(UTC)

    with pytest.raises(ValueError, match=message):
        await pki.tenant_a.issue_leaf(
            _csr(_p256(), ("a.example",)), sans, now, now + timedelta(days=days), serial, 0, True
        )


async def test_issue_leaf_signs_off_the_event_loop(pki: Pki) -> None:
    threads: list[int] = []

    class RecordingKey(ec.EllipticCurvePrivateKey):
        """A CA key that notes which thread signs, as a PKCS#11 adapter would block there."""

        def __init__(self, inner: ec.EllipticCurvePrivateKey) -> None:
            self._inner = inner

        def sign(self, data: utils.Buffer, signature_algorithm: Any) -> bytes:
            threads.append(threading.get_ident())
            return self._inner.sign(data, signature_algorithm)

        def public_key(self) -> ec.EllipticCurvePublicKey:
            return self._inner.public_key()

        @property
        def curve(self) -> ec.EllipticCurve:
            return self._inner.curve

        @property
        def key_size(self) -> int:
            return self._inner.key_size

        def exchange(self, algorithm: Any, peer_public_key: Any) -> bytes:
            raise NotImplementedError

        def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
            raise NotImplementedError

        def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
            raise NotImplementedError

        def __copy__(self) -> RecordingKey:
            return self

        def __deepcopy__(self, memo: Any) -> RecordingKey:
            return self

    ca_key = pki.tenant_a.key
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    issuer = Issuer("tenant-a", pki.tenant_a.certificate, RecordingKey(ca_key), pki.root, HTTP_URL)

    leaf = await _leaf(issuer, _csr(_p256(), ("a.example",)), [("dns", "a.example")])

    leaf.verify_directly_issued_by(pki.tenant_a.certificate)
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


async def test_openssl_verifies_leaf_through_tenant_ca_only(tmp_path: Path, pki: Pki) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    leaf = await _leaf(pki.tenant_a, _csr(_p256(), ("a.example",)), [("dns", "a.example")])
    files = {
        "root.pem": _pem(pki.root),
        "ca-a.pem": _pem(pki.tenant_a.certificate),
        "ca-b.pem": _pem(pki.tenant_b.certificate),
        "leaf.pem": _pem(leaf),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    def verify(untrusted: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [openssl, "verify", "-x509_strict", "-purpose", "sslserver",
             "-CAfile", str(tmp_path / "root.pem"),
             "-untrusted", str(tmp_path / untrusted), str(tmp_path / "leaf.pem")],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    good = verify("ca-a.pem")
    bad = verify("ca-b.pem")

    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip().endswith("leaf.pem: OK")
    assert bad.returncode != 0


def test_issuer_urls_and_chain(pki: Pki) -> None:
    issuer = Issuer("acme-co", pki.tenant_a.certificate, pki.tenant_a.key, pki.root, HTTP_URL)

    assert issuer.ca_issuers_url == "http://localhost:8080/acme-co/ca.crt"
    assert issuer.ocsp_url == "http://localhost:8080/acme-co/ocsp"
    assert issuer.crl_url(3) == "http://localhost:8080/acme-co/crl/3.crl"
    chain = x509.load_pem_x509_certificates(issuer.chain_pem().encode())
    assert chain == [pki.tenant_a.certificate, pki.root]


def test_issuer_refuses_key_of_another_ca(pki: Pki) -> None:
    with pytest.raises(ValueError, match="does not match"):
        Issuer("tenant-a", pki.tenant_a.certificate, pki.tenant_b.key, pki.root, HTTP_URL)


# Serials and shards.


def test_new_serial_is_positive_127_bits_and_distinct() -> None:
    serials = [new_serial() for _ in range(2000)]

    assert all(0 < s < 1 << 127 for s in serials)
    assert len(set(serials)) == len(serials)
    assert max(s.bit_length() for s in serials) >= 120  # the high bits are random too


def test_shard_for_serial_spreads_over_all_shards() -> None:
    shards = [shard_for_serial(new_serial(), 4) for _ in range(400)]

    assert set(shards) == {0, 1, 2, 3}
    assert shard_for_serial(new_serial(), 1) == 0
    assert shard_for_serial(0x1_0000_0000_0000_0007, 4) == 3
    with pytest.raises(ValueError):
        shard_for_serial(5, 0)


# The HTTPS listener's certificate.


async def test_tls_certificate_files_chain_and_modes(tmp_path: Path, pki: Pki) -> None:
    cert_path, key_path = tmp_path / "tls.pem", tmp_path / "tls.key"

    cert = await create_tls_certificate(
        pki.root_key, pki.root, ["acme.test"], ["::1"], cert_path, key_path
    )

    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "acme.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(pki.root)
    assert x509.load_pem_x509_certificates(cert_path.read_bytes()) == [cert, pki.root]
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)  # raises if key and certificate differ
