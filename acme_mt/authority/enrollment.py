"""EST enrollment (RFC 7030 §4.2, §4.4) through the registration authority.

EST certificates are ordinary certificate records with ``channel="est"``: they
are revocable and appear in OCSP and CRLs like ACME ones. Issuance mirrors
ACME finalize: the tenant's default profile and policy decide (key types via
``check_csr``, ``allowed_suffixes``, ``max_identifiers``, validity), the serial
is recorded before signing and completed after it, and both steps are audited.

Clients prove who they are with a certificate of this tenant's CA (RFC 7030
§3.3.2) or an enrollment credential over HTTP Basic (§3.2.3). Credentials keep
only a salted scrypt hash of a generated password.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from acme_mt.authority.identifiers import identifier_problem
from acme_mt.errors import AcmeMtError, AcmeProblem
from acme_mt.events import Events
from acme_mt.issuance import check_csr, key_type_name, new_serial, shard_for_serial
from acme_mt.keystores.base import parse_key_type
from acme_mt.models import AuditEntry, CertificateRecord, CertificateStatus, Identifier, utcnow
from acme_mt.storage.base import EstCredential, TenantStore
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.profiles import Profile

logger = logging.getLogger(__name__)

#: Backdating absorbs small clock differences, as for ACME certificates.
BACKDATE = timedelta(minutes=1)
#: scrypt cost: 16 MiB and about 50 ms per check (RFC 7914 §2).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_CONCURRENCY = 4
PASSWORD_BYTES = 24
VERIFIED_CACHE_SIZE = 10_000

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_CURVES: dict[str, ec.EllipticCurve] = {
    "secp256r1": ec.SECP256R1(),
    "secp384r1": ec.SECP384R1(),
}


class EnrollmentError(AcmeMtError):
    """Root of enrollment failures; ``detail`` is safe to show the client."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class EnrollmentRefused(EnrollmentError):
    """The request breaks a rule and ``detail`` names it (EST answers 400)."""


class EnrollmentDenied(EnrollmentError):
    """The client did not prove it may enroll at this tenant (EST answers 401 or 403)."""


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A self-describing scrypt hash: ``scrypt$N$r$p$salt$hash``, base64 fields."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    fields = (str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest))
    return "scrypt$" + "$".join(fields)


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a hash from ``hash_password`` (any recorded cost)."""
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt" or int(n) > 2**20 or int(r) > 32 or int(p) > 16:
            return False
        cost = {"n": int(n), "r": int(r), "p": int(p), "maxmem": 256 * int(r) * int(n)}
        digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, **cost)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, base64.b64decode(expected))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def create_credential(store: TenantStore, actor: str = "cli") -> tuple[EstCredential, str]:
    """Make an enrollment credential; the password is returned once and never stored."""
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    credential_id = secrets.token_hex(8)
    credential = EstCredential(
        id=credential_id,
        username=f"est-{credential_id}",
        password_hash=await asyncio.to_thread(hash_password, password),
        created=utcnow(),
    )
    audit = AuditEntry(
        "est.credential.created", {"id": credential.id, "username": credential.username}, actor
    )
    await store.create_est_credential(credential, (audit,))
    return credential, password


async def revoke_credential(store: TenantStore, credential_id: str, actor: str = "cli") -> bool:
    """Revoke a credential at once; False when it is unknown or revoked already."""
    audit = AuditEntry("est.credential.revoked", {"id": credential_id}, actor)
    return await store.revoke_est_credential(credential_id, utcnow(), (audit,))


def generate_key(key_type: str) -> PrivateKey:
    """A new private key of a policy key type ("ec-p256", "rsa-2048", ...).

    :raises acme_mt.errors.ConfigError: the key type is unknown.
    """
    _kind, param = parse_key_type(key_type)
    if isinstance(param, int):
        return rsa.generate_private_key(public_exponent=65537, key_size=param)
    return ec.generate_private_key(_CURVES[param])


def requested_names(csr: x509.CertificateSigningRequest) -> list[tuple[str, str]]:
    """The CSR's names in its own order: SAN entries, then a subject CN not among them.

    The order is kept so that a certificate's SAN is the CSR's, byte for byte,
    which is what a renewal must repeat (RFC 7030 §4.2.2).

    :raises EnrollmentRefused: the subject or SAN is malformed or holds other name types.
    """
    try:
        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    except (ValueError, x509.DuplicateExtension):
        raise EnrollmentRefused("the CSR's subject or extensions are malformed") from None
    names: list[tuple[str, str]] = []
    for name in san:
        if isinstance(name, x509.DNSName):
            names.append(("dns", name.value))
        elif isinstance(name, x509.IPAddress) and not isinstance(
            name.value, ipaddress.IPv4Network | ipaddress.IPv6Network
        ):
            names.append(("ip", str(name.value)))
        else:
            raise EnrollmentRefused("the CSR's subjectAltName may hold only DNS names and IPs")
    for attribute in common_names:
        value = attribute.value
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        try:
            names.append(("ip", str(ipaddress.ip_address(text))))
        except ValueError:
            names.append(("dns", text))
    unique: dict[tuple[str, str], tuple[str, str]] = {}
    for kind, value in names:
        unique.setdefault((kind, value.lower()), (kind, value))
    return list(unique.values())


def check_names(names: list[tuple[str, str]], tenant: TenantContext, profile: Profile) -> None:
    """Apply the tenant's identifier rules to the names of an EST request.

    :raises EnrollmentRefused: naming the rule and the name that broke it.
    """
    if not names:
        raise EnrollmentRefused("the CSR names nothing: put DNS names in its subjectAltName")
    if len(names) > profile.max_identifiers:
        raise EnrollmentRefused(
            f"policy max_identifiers allows at most {profile.max_identifiers} names;"
            f" the CSR asks for {len(names)}"
        )
    for kind, value in names:
        # Limitation: EST proves no control of a name, so wildcards are refused
        # outright; a policy field for EST wildcards would lift this.
        if kind == "dns" and value.startswith("*."):
            raise EnrollmentRefused(f"{value}: wildcard names are not issued over EST")
        problem = identifier_problem(Identifier(kind, value), tenant.policy, profile)
        if problem is not None:
            raise EnrollmentRefused(f"{value}: {problem[1]}")


@dataclass(frozen=True)
class _Verified:
    password_hash: str
    proof: bytes


class EnrollmentService:
    """The only writer of EST certificates and the judge of EST client credentials."""

    def __init__(self, events: Events) -> None:
        self._events = events
        self._scrypt_slots = asyncio.Semaphore(SCRYPT_CONCURRENCY)
        # A password proven once is remembered as an HMAC under a per-process key,
        # so repeat enrollments skip scrypt; revocation is read from the store each time.
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[tuple[str, str], _Verified] = {}

    async def authenticate_password(
        self, tenant: TenantContext, username: str, password: str
    ) -> str:
        """Check an HTTP Basic credential of this tenant; return the audit actor.

        :raises EnrollmentDenied: unknown user, revoked credential or wrong password.
        """
        credential = await tenant.store.get_est_credential(username)
        if credential is None or credential.revoked_at is not None:
            async with self._scrypt_slots:  # as slow as a wrong password, to hide which it was
                await asyncio.to_thread(hash_password, password)
            raise EnrollmentDenied("unknown username or wrong password")
        key = (tenant.id, credential.id)
        proof = hmac.new(self._cache_key, password.encode(), hashlib.sha256).digest()
        known = self._verified.get(key)
        if (
            known is not None
            and known.password_hash == credential.password_hash
            and hmac.compare_digest(known.proof, proof)
        ):
            return f"est-credential:{credential.id}"
        async with self._scrypt_slots:
            ok = await asyncio.to_thread(verify_password, password, credential.password_hash)
        if not ok:
            raise EnrollmentDenied("unknown username or wrong password")
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[key] = _Verified(credential.password_hash, proof)
        return f"est-credential:{credential.id}"

    async def authenticate_certificate(self, tenant: TenantContext, der: bytes) -> x509.Certificate:
        """Accept a TLS client certificate only if this tenant issued it and it is live.

        :raises EnrollmentDenied: another issuer, unknown, revoked or outside its validity.
        """
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            raise EnrollmentDenied("the client certificate cannot be parsed") from None
        try:
            certificate.verify_directly_issued_by(tenant.issuer.certificate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise EnrollmentDenied("the client certificate was not issued by this CA") from None
        record = await tenant.store.get_certificate(format(certificate.serial_number, "x"))
        if record is None or record.der != der:
            raise EnrollmentDenied("the client certificate is not known to this CA")
        if record.status != CertificateStatus.VALID:
            raise EnrollmentDenied(f"the client certificate is {record.status}")
        now = utcnow()
        if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
            raise EnrollmentDenied("the client certificate is outside its validity period")
        return certificate

    async def enroll(
        self, tenant: TenantContext, csr: x509.CertificateSigningRequest, actor: str
    ) -> x509.Certificate:
        """RFC 7030 §4.2.1: issue for a CSR that the tenant's policy accepts."""
        return await self._issue(tenant, csr, actor, {"operation": "simpleenroll"})

    async def reenroll(
        self,
        tenant: TenantContext,
        csr: x509.CertificateSigningRequest,
        current: x509.Certificate,
        actor: str,
    ) -> x509.Certificate:
        """RFC 7030 §4.2.2: renew ``current``; the CSR's subject and SAN must be its own."""
        requested_names(csr)  # refuses a malformed subject or SAN before comparing
        if csr.subject.public_bytes() != current.subject.public_bytes():
            raise EnrollmentRefused("the CSR's subject differs from the current certificate's")
        if _san_bytes(csr.extensions) != _san_bytes(current.extensions):
            raise EnrollmentRefused(
                "the CSR's subjectAltName differs from the current certificate's"
            )
        replaces = format(current.serial_number, "x")
        details = {"operation": "simplereenroll", "replaces": replaces}
        return await self._issue(tenant, csr, actor, details)

    async def enroll_server_key(
        self, tenant: TenantContext, csr: x509.CertificateSigningRequest, actor: str
    ) -> tuple[PrivateKey, x509.Certificate]:
        """RFC 7030 §4.4: make the key pair here, of the CSR's type if the policy allows it."""
        try:
            signed = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm):
            signed = False
        if not signed:
            raise EnrollmentRefused("the CSR's signature does not verify")
        profile = _default_profile(tenant)
        check_names(requested_names(csr), tenant, profile)
        try:
            wanted = key_type_name(csr.public_key())
        except (ValueError, UnsupportedAlgorithm):
            wanted = None
        key_type = wanted if wanted in profile.key_types else profile.key_types[0]
        key, own_csr = await asyncio.to_thread(_server_csr, csr, key_type)
        details = {"operation": "serverkeygen", "key_type": key_type}
        return key, await self._issue(tenant, own_csr, actor, details)

    async def _issue(
        self,
        tenant: TenantContext,
        csr: x509.CertificateSigningRequest,
        actor: str,
        details: dict[str, str],
    ) -> x509.Certificate:
        """Check, record, sign and complete one EST certificate (ACME finalize's order)."""
        profile = _default_profile(tenant)
        names = requested_names(csr)
        check_names(names, tenant, profile)
        try:
            check_csr(csr, replace(tenant.policy, key_types=profile.key_types))
        except AcmeProblem as problem:
            raise EnrollmentRefused(problem.detail) from None

        now = utcnow()
        not_before = now - BACKDATE
        not_after = min(
            not_before + timedelta(days=profile.validity_days),
            tenant.issuer.certificate.not_valid_after_utc,
        )
        serial = new_serial()
        record = CertificateRecord(
            serial=format(serial, "x"),
            account_id=None,
            order_id=None,
            status=CertificateStatus.PENDING,
            not_before=not_before,
            not_after=not_after,
            created=now,
            shard=shard_for_serial(serial, tenant.policy.crl_shards),
            channel="est",
        )
        data = {"serial": record.serial, "channel": "est", **details}
        intent = AuditEntry("certificate.signing", {**data, "names": [v for _, v in names]}, actor)
        await tenant.store.insert_certificate(record, (intent,))
        certificate = await self._sign(tenant, csr, names, record, serial, profile, actor)

        issued = replace(
            record,
            status=CertificateStatus.VALID,
            der=certificate.public_bytes(serialization.Encoding.DER),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
        )
        outcome = AuditEntry("certificate.issued", data, actor)
        await tenant.store.complete_issuance(None, issued, (outcome,))
        self._events.issued(tenant.id, record.serial)
        logger.info("issued serial %s over EST (%s)", record.serial, details["operation"])
        return certificate

    async def _sign(
        self,
        tenant: TenantContext,
        csr: x509.CertificateSigningRequest,
        names: list[tuple[str, str]],
        record: CertificateRecord,
        serial: int,
        profile: Profile,
        actor: str,
    ) -> x509.Certificate:
        """Sign a recorded serial; on failure mark it abandoned and audit that."""
        try:
            return await tenant.issuer.issue_leaf(
                csr,
                names,
                not_before=record.not_before,
                not_after=record.not_after,
                serial=serial,
                shard=record.shard,
                ocsp=tenant.policy.ocsp,
                extended_key_usages=profile.eku_oids,
            )
        except Exception:
            logger.exception("signing serial %s failed", record.serial)
            failed = AuditEntry("certificate.failed", {"serial": record.serial}, actor)
            await tenant.store.abandon_issuance(None, record.serial, (failed,))
            raise


def _default_profile(tenant: TenantContext) -> Profile:
    """EST has no way to name a profile, so the tenant's default applies."""
    profile = tenant.policy.profile(None)
    return profile if profile is not None else tenant.policy.all_profiles()[0]


def _san_bytes(extensions: x509.Extensions) -> bytes | None:
    try:
        return extensions.get_extension_for_class(x509.SubjectAlternativeName).value.public_bytes()
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension):
        raise EnrollmentRefused("the subjectAltName extension is malformed") from None


def _server_csr(
    csr: x509.CertificateSigningRequest, key_type: str
) -> tuple[PrivateKey, x509.CertificateSigningRequest]:
    """A new key and a CSR it signs, carrying the client's subject and SAN."""
    key = generate_key(key_type)
    builder = x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(san.value, critical=san.critical)
    except x509.ExtensionNotFound:
        pass
    return key, builder.sign(key, hashes.SHA256())
