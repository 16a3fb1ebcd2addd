"""CSR parsing and checks: key types, weak keys, signatures, identifiers (RFC 8555 §7.4)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from acme_mt.errors import AcmeProblem
from acme_mt.issuance import check_csr, csr_identifiers, parse_csr
from acme_mt.tenancy.policy import TenantPolicy


def _csr(
    key: Any, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), cn: str | None = None
) -> x509.CertificateSigningRequest:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_parse_csr_rejects_garbage() -> None:
    with pytest.raises(AcmeProblem) as caught:
        parse_csr(b"\x30\x03\x02\x01\x00")

    assert caught.value.to_json() == {
        "type": "urn:ietf:params:acme:error:badCSR",
        "detail": "the CSR is not a valid DER PKCS#10 request",
        "status": 400,
    }


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ec-p256"),
        (ec.generate_private_key(ec.SECP384R1()), "ec-p384"),
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-2048"),
    ],
)
def test_check_csr_returns_key_type(key: Any, name: str) -> None:
    der = _csr(key, ("a.example",)).public_bytes(serialization.Encoding.DER)

    assert check_csr(parse_csr(der), TenantPolicy()) == name


def test_check_csr_rejects_key_type_outside_policy_naming_allowed_types() -> None:
    policy = TenantPolicy(key_types=("ec-p256", "rsa-2048"))
    csr = _csr(ec.generate_private_key(ec.SECP384R1()), ("a.example",))

    with pytest.raises(AcmeProblem) as caught:
        check_csr(csr, policy)

    assert caught.value.type == "badCSR"
    assert caught.value.detail == (
        "policy key_types allows ec-p256, rsa-2048; the CSR key is ec-p384"
    )


@pytest.mark.parametrize(
    "key",
    [ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP521R1())],
    ids=["ed25519", "p521"],
)
def test_check_csr_rejects_unsupported_key(key: Any) -> None:
    with pytest.raises(AcmeProblem) as caught:
        check_csr(_csr(key, ("a.example",)), TenantPolicy(key_types=("ec-p256",)))

    assert caught.value.detail == "the CSR's key type is not supported; this CA accepts ec-p256"


def test_check_csr_rejects_bad_signature() -> None:
    der = bytearray(_csr(_p256(), ("a.example",)).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the ECDSA signature's s integer

    with pytest.raises(AcmeProblem) as caught:
        check_csr(parse_csr(bytes(der)), TenantPolicy())

    assert caught.value.detail == "the CSR's signature does not verify"


def test_check_csr_rejects_sha1_signature(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        _p256().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    made = subprocess.run(
        [openssl, "req", "-new", "-key", str(key_file), "-sha1", "-subj", "/CN=a.example",
         "-outform", "DER"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    csr = parse_csr(made.stdout)
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA1)

    with pytest.raises(AcmeProblem) as caught:
        check_csr(csr, TenantPolicy())

    assert caught.value.detail == "the CSR must be signed with SHA-256, SHA-384 or SHA-512"


def test_check_csr_rejects_rsa_exponent_3() -> None:
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)

    with pytest.raises(AcmeProblem) as caught:
        check_csr(_csr(key, ("a.example",)), TenantPolicy())

    assert caught.value.detail == "the CSR's key is weak: the RSA public exponent must be 65537"


def _probable_prime(n: int) -> bool:
    if n % 2 == 0:
        return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for base in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(base, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _next_prime(n: int) -> int:
    n |= 1
    while not _probable_prime(n):
        n += 2
    return n


def test_check_csr_rejects_rsa_modulus_with_close_primes() -> None:
    p = _next_prime((1 << 1023) + (1 << 1022) + 12345)
    q = _next_prime(p + 2)
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q)
    )
    key = numbers.private_key()
    assert key.key_size == 2048

    with pytest.raises(AcmeProblem) as caught:
        check_csr(_csr(key, ("a.example",)), TenantPolicy())

    assert caught.value.detail.startswith("the CSR's key is weak: the RSA modulus factors easily")


def test_csr_without_cn_is_accepted_and_names_come_from_san() -> None:
    csr = _csr(_p256(), ("WWW.Example.org", "example.org"), ips=("2001:db8:0::1",))

    assert check_csr(csr, TenantPolicy()) == "ec-p256"
    assert csr_identifiers(csr) == {
        ("dns", "www.example.org"),
        ("dns", "example.org"),
        ("ip", "2001:db8::1"),
    }


def test_csr_identifiers_include_cn() -> None:
    assert csr_identifiers(_csr(_p256(), ("a.example",), cn="B.example")) == {
        ("dns", "a.example"),
        ("dns", "b.example"),
    }
    assert csr_identifiers(_csr(_p256(), cn="192.0.2.1")) == {("ip", "192.0.2.1")}


def test_csr_identifiers_reject_other_san_types() -> None:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.RFC822Name("a@example.org")]), critical=False
    )
    csr = builder.sign(_p256(), hashes.SHA256())

    with pytest.raises(AcmeProblem) as caught:
        csr_identifiers(csr)

    assert caught.value.detail == (
        "the CSR's subjectAltName may hold only DNS names and IP addresses"
    )
