"""Delegated OCSP signers and signed OCSP responses (RFC 6960 §4.2, RFC 5019 §2.2).

A tenant's CA does not sign OCSP responses itself: it issues a short-lived
delegated responder certificate (RFC 6960 §4.2.2.2) with the id-kp-OCSPSigning
extended key usage and id-pkix-ocsp-nocheck (§4.2.2.2.1), whose P-256 key is
generated in the tenant's own key partition like every other key.

Responses name the responder by key hash (§4.2.1, ResponderID byKey) and carry
the signer certificate, so a relying party that trusts the root can build the
chain signer, tenant CA, root. A response about one certificate is built by
cryptography's ``OCSPResponseBuilder``; one naming several certificates, or a
CertID whose hash algorithm has no NULL parameters (which the builder would
re-encode, so that strict clients no longer find their CertID), is assembled
with asn1crypto and its ``ResponseData`` signed as bytes. Both sign through
``acme_mt.issuance.signer.sign``, in a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acme_mt.issuance.certificates import (
    Issuer,
    authority_key_identifier,
    check_key_pair,
    key_usage,
    new_serial,
)
from acme_mt.issuance.signer import SignatureHash, sign
from acme_mt.keystores.base import KeyPartition, SigningKey
from acme_mt.models import utcnow

logger = logging.getLogger(__name__)

SIGNER_LIFETIME = timedelta(days=7)
SIGNER_KEY_TYPE = "ec-p256"
SIGNER_LABEL_PREFIX = "ocsp-"
#: The signer starts a little in the past so clients with slow clocks accept it.
SIGNER_BACKDATE = timedelta(hours=1)

CertStatus = ocsp.OCSPCertStatus

#: CertID hash algorithms (RFC 6960 §4.1.1) by their asn1crypto names.
CERT_ID_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: CRLReason codes (RFC 5280 §5.3.1) as cryptography names them; 7 is unused.
_REASONS: dict[int, x509.ReasonFlags] = {
    0: x509.ReasonFlags.unspecified,
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


@dataclass(frozen=True, eq=False)
class OcspSigner:
    """A tenant's delegated OCSP responder: a key in its partition, certified by its CA."""

    key_label: str
    key: SigningKey
    certificate: x509.Certificate

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @cached_property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @cached_property
    def key_hash(self) -> bytes:
        """SHA-1 of the signer's subjectPublicKey bits: its ResponderID byKey (§4.2.1)."""
        digest: bytes = asn1_x509.Certificate.load(self.certificate_der).public_key.sha1
        return digest


async def issue_ocsp_signer(
    issuer: Issuer, partition: KeyPartition, now: datetime, lifetime: timedelta = SIGNER_LIFETIME
) -> OcspSigner:
    """Generate a signer key in the tenant's partition and certify it from the tenant CA.

    :raises acme_mt.errors.KeyStoreError: the key could not be generated.
    """
    label = f"{SIGNER_LABEL_PREFIX}{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    key = await partition.generate(label, SIGNER_KEY_TYPE)
    public_key = key.public_key()
    not_after = min(now + lifetime, issuer.certificate.not_valid_after_utc)
    common_name = f"{issuer.slug} OCSP responder"[:64]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - SIGNER_BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    certificate = await sign(builder, issuer.key, issuer.executor)
    logger.info("issued OCSP signer %x for tenant %s", certificate.serial_number, issuer.slug)
    return OcspSigner(label, key, certificate)


def load_ocsp_signer(
    issuer: Issuer, key_label: str, key: SigningKey, certificate_der: bytes
) -> OcspSigner:
    """Rebuild a saved signer, refusing one the tenant CA did not certify for OCSP.

    :raises ValueError: another issuer, no OCSPSigning usage, or a foreign key.
    """
    certificate = x509.load_der_x509_certificate(certificate_der)
    try:
        certificate.verify_directly_issued_by(issuer.certificate)
    except Exception as exc:
        raise ValueError("the OCSP signer was not issued by this tenant's CA") from exc
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
        raise ValueError("the OCSP signer certificate lacks id-kp-OCSPSigning")
    check_key_pair(key, certificate)
    return OcspSigner(key_label, key, certificate)


@dataclass(frozen=True)
class SingleAnswer:
    """The status of one certificate as one SingleResponse will state it (§4.2.1)."""

    hash_name: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    status: CertStatus
    this_update: datetime
    next_update: datetime
    revoked_at: datetime | None = None
    reason: int | None = None
    #: The request's CertID, echoed byte for byte when it is not the canonical
    #: encoding (hash parameters NULL) that cryptography's builder writes.
    cert_id_der: bytes = b""

    @property
    def canonical(self) -> bool:
        return not self.cert_id_der


def issuer_hashes(certificate: x509.Certificate, hash_name: str) -> tuple[bytes, bytes]:
    """issuerNameHash and issuerKeyHash of a CA under one CertID hash (§4.1.1)."""
    parsed = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    name = parsed.subject.dump()
    key_bits = parsed.public_key["public_key"].contents[1:]
    return hashlib.new(hash_name, name).digest(), hashlib.new(hash_name, key_bits).digest()


async def sign_responses(
    signer: OcspSigner, answers: Sequence[SingleAnswer], executor: Executor | None = None
) -> list[bytes]:
    """One signed response per answer, in one trip to a worker thread (pre-signing)."""
    builders = [_builder(signer, answer, None) for answer in answers]
    return await sign(_Batch(builders), signer.key, executor)


async def sign_response(
    signer: OcspSigner,
    answers: Sequence[SingleAnswer],
    nonce: bytes | None = None,
    executor: Executor | None = None,
) -> bytes:
    """One signed response naming every answer, echoing ``nonce`` (RFC 8954) if given."""
    if len(answers) == 1 and answers[0].canonical:
        single = _Batch([_builder(signer, answers[0], nonce)])
        return (await sign(single, signer.key, executor))[0]
    combined = _Combined(signer, _response_data(signer, answers, nonce))
    return await sign(combined, signer.key, executor)


def _builder(
    signer: OcspSigner, answer: SingleAnswer, nonce: bytes | None
) -> ocsp.OCSPResponseBuilder:
    revoked = answer.status is CertStatus.REVOKED
    reason = _REASONS.get(answer.reason or 0) if revoked and answer.reason else None
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=answer.issuer_name_hash,
            issuer_key_hash=answer.issuer_key_hash,
            serial_number=answer.serial,
            algorithm=CERT_ID_HASHES[answer.hash_name](),
            cert_status=answer.status,
            this_update=answer.this_update,
            next_update=answer.next_update,
            revocation_time=answer.revoked_at if revoked else None,
            revocation_reason=reason,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, signer.certificate)
        .certificates([signer.certificate])
    )
    if nonce is not None:
        return builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder


class _Batch:
    """Several cryptography builders signed in one worker-thread call."""

    def __init__(self, builders: Sequence[ocsp.OCSPResponseBuilder]) -> None:
        self._builders = builders

    def sign(self, private_key: SigningKey, algorithm: SignatureHash) -> list[bytes]:
        encoding = serialization.Encoding.DER
        return [b.sign(private_key, algorithm).public_bytes(encoding) for b in self._builders]


def _single_response(answer: SingleAnswer) -> asn1_ocsp.SingleResponse:
    if answer.status is CertStatus.REVOKED:
        info: dict[str, object] = {"revocation_time": answer.revoked_at}
        if answer.reason:
            info["revocation_reason"] = answer.reason
        status = asn1_ocsp.CertStatus(name="revoked", value=asn1_ocsp.RevokedInfo(info))
    else:
        name = "good" if answer.status is CertStatus.GOOD else "unknown"
        status = asn1_ocsp.CertStatus(name=name, value=asn1_core.Null())
    if answer.cert_id_der:
        cert_id = asn1_ocsp.CertId.load(answer.cert_id_der)
    else:
        algorithm = {"algorithm": answer.hash_name, "parameters": asn1_core.Null()}
        cert_id = asn1_ocsp.CertId(
            {
                "hash_algorithm": algorithm,
                "issuer_name_hash": answer.issuer_name_hash,
                "issuer_key_hash": answer.issuer_key_hash,
                "serial_number": answer.serial,
            }
        )
    return asn1_ocsp.SingleResponse(
        {
            "cert_id": cert_id,
            "cert_status": status,
            "this_update": answer.this_update,
            "next_update": answer.next_update,
        }
    )


def _response_data(
    signer: OcspSigner, answers: Sequence[SingleAnswer], nonce: bytes | None
) -> asn1_ocsp.ResponseData:
    data: dict[str, object] = {
        "responder_id": asn1_ocsp.ResponderId(name="by_key", value=signer.key_hash),
        "produced_at": utcnow().replace(microsecond=0),
        "responses": [_single_response(answer) for answer in answers],
    }
    if nonce is not None:
        value = asn1_core.ParsableOctetString(asn1_core.OctetString(nonce).dump())
        data["response_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": value}]
    return asn1_ocsp.ResponseData(data)


class _Combined:
    """A ResponseData that asn1crypto assembled, signed as bytes in the worker thread."""

    def __init__(self, signer: OcspSigner, data: asn1_ocsp.ResponseData) -> None:
        self._signer = signer
        self._data = data

    def sign(self, private_key: SigningKey, algorithm: SignatureHash) -> bytes:
        to_be_signed = self._data.dump()
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            signature = private_key.sign(to_be_signed, ec.ECDSA(algorithm))
            algorithm_name = f"{algorithm.name}_ecdsa"
        elif isinstance(private_key, rsa.RSAPrivateKey):
            signature = private_key.sign(to_be_signed, padding.PKCS1v15(), algorithm)
            algorithm_name = f"{algorithm.name}_rsa"
        else:
            raise TypeError("an OCSP signer key must be EC or RSA")
        basic = asn1_ocsp.BasicOCSPResponse(
            {
                "tbs_response_data": self._data,
                "signature_algorithm": {"algorithm": algorithm_name},
                "signature": signature,
                "certs": [asn1_x509.Certificate.load(self._signer.certificate_der)],
            }
        )
        response = asn1_ocsp.OCSPResponse(
            {
                "response_status": "successful",
                "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
            }
        )
        return bytes(response.dump())
