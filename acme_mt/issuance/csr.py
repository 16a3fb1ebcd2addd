"""Parsing and checking certificate signing requests (RFC 2986, RFC 8555 §7.4).

A CSR is accepted when its self-signature verifies with a SHA-2 hash, its key
is of a type the tenant allows and the key is not known to be weak. Every
rejection is a ``badCSR`` problem whose detail names the rule that failed.
"""

from __future__ import annotations

import ipaddress
import logging
import math

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from acme_mt.errors import AcmeProblem
from acme_mt.tenancy.policy import TenantPolicy

logger = logging.getLogger(__name__)

_CURVE_NAMES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}
_RSA_SIZES = (2048, 3072, 4096)
_SIGNATURE_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)

#: Product of the odd primes below 1000; a modulus sharing a factor with it is broken.
_SMALL_PRIMES_PRODUCT = math.prod(
    n for n in range(3, 1000, 2) if all(n % d for d in range(3, math.isqrt(n) + 1, 2))
)
_FERMAT_ROUNDS = 100


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """Decode a DER CSR as sent in finalize (RFC 8555 §7.4) or an EST enrolment.

    :raises AcmeProblem: ``badCSR`` when the bytes are not a CSR.
    """
    try:
        return x509.load_der_x509_csr(der)
    except ValueError:
        raise AcmeProblem("badCSR", "the CSR is not a valid DER PKCS#10 request") from None


def key_type_name(public_key: CertificatePublicKeyTypes) -> str | None:
    """The policy name of a public key ("ec-p256", "rsa-2048", ...), or None if unknown."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _CURVE_NAMES.get(public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size in _RSA_SIZES:
        return f"rsa-{public_key.key_size}"
    return None


def _rsa_weakness(public_key: rsa.RSAPublicKey) -> str | None:
    """Say why an RSA key is weak, or None: exponent, small factors, close primes."""
    numbers = public_key.public_numbers()
    if numbers.e != 65537:
        return "the RSA public exponent must be 65537"
    n = numbers.n
    if n % 2 == 0 or math.gcd(n, _SMALL_PRIMES_PRODUCT) != 1:
        return "the RSA modulus has a small prime factor"
    # Fermat's method finds p and q within a few rounds when they lie close together.
    a = math.isqrt(n)
    if a * a < n:
        a += 1
    for _ in range(_FERMAT_ROUNDS):
        b2 = a * a - n
        b = math.isqrt(b2)
        if b * b == b2:
            return "the RSA modulus factors easily (its primes are too close together)"
        a += 1
    return None


def check_csr(csr: x509.CertificateSigningRequest, policy: TenantPolicy) -> str:
    """Check a CSR's key and signature against a tenant's policy; return its key type.

    :raises AcmeProblem: ``badCSR`` naming the rule that failed.
    """
    allowed = ", ".join(policy.key_types)
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise AcmeProblem("badCSR", "the CSR's public key cannot be decoded") from None

    key_type = key_type_name(public_key)
    if key_type is None:
        raise AcmeProblem(
            "badCSR", f"the CSR's key type is not supported; this CA accepts {allowed}"
        )
    if isinstance(public_key, rsa.RSAPublicKey):
        weakness = _rsa_weakness(public_key)
        if weakness is not None:
            raise AcmeProblem("badCSR", f"the CSR's key is weak: {weakness}")
    if key_type not in policy.key_types:
        raise AcmeProblem("badCSR", f"policy key_types allows {allowed}; the CSR key is {key_type}")

    try:
        algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None
    if not isinstance(algorithm, _SIGNATURE_HASHES):
        raise AcmeProblem("badCSR", "the CSR must be signed with SHA-256, SHA-384 or SHA-512")
    if not csr.is_signature_valid:
        raise AcmeProblem("badCSR", "the CSR's signature does not verify")
    return key_type


def _identifier(value: str) -> tuple[str, str]:
    """Classify a name as ("ip", canonical text) or ("dns", lower-cased)."""
    try:
        return "ip", str(ipaddress.ip_address(value))
    except ValueError:
        return "dns", value.lower()


def csr_identifiers(csr: x509.CertificateSigningRequest) -> set[tuple[str, str]]:
    """The identifiers a CSR asks for: SAN DNS names and IPs, plus any subject CN.

    A CSR without a CN is fine (RFC 8555 §7.4 needs only the SAN).

    :raises AcmeProblem: ``badCSR`` when the SAN is malformed or holds other name types.
    """
    identifiers: set[tuple[str, str]] = set()
    try:
        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        raise AcmeProblem("badCSR", "the CSR's subject is malformed") from None
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        extension = None
    except (ValueError, x509.DuplicateExtension):
        raise AcmeProblem("badCSR", "the CSR's extensions are malformed") from None

    for attribute in common_names:
        value = attribute.value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        identifiers.add(_identifier(value))
    if extension is None:
        return identifiers
    for name in extension.value:
        if isinstance(name, x509.DNSName):
            identifiers.add(("dns", name.value.lower()))
        elif isinstance(name, x509.IPAddress) and not isinstance(
            name.value, ipaddress.IPv4Network | ipaddress.IPv6Network
        ):
            identifiers.add(("ip", str(name.value)))
        else:
            raise AcmeProblem(
                "badCSR", "the CSR's subjectAltName may hold only DNS names and IP addresses"
            )
    return identifiers
