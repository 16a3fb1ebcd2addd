"""CRL drafts and signing in acme_mt.issuance.crl (RFC 5280 §5)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acme_mt.issuance.crl import CrlDraft, RevokedSerial, sign_crls
from acme_mt.models import AuditEntry

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SCOPE = "http://localhost:8080/acme/crl/2.crl"
DELTA = "http://localhost:8080/acme/crl/2-delta.crl"
VERIFY_CRL = ("openssl", "crl", "-verify", "-noout", "-inform", "DER", "-in", "crl.der")


def make_ca(
    name: str, not_after: datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA, valid for ten years from NOW unless ``not_after`` says else."""
    not_after = not_after or NOW + timedelta(days=3650)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(NOW, not_after) - timedelta(days=30))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return make_ca("Test CA")


class Recorder:
    """An audit sink that keeps what it was given."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    async def append_audit(self, audit: Sequence[AuditEntry]) -> None:
        self.entries.extend(audit)


ENTRIES = [
    RevokedSerial("0a", NOW - timedelta(hours=1), 0),
    RevokedSerial("0b", NOW - timedelta(hours=2), 1),
    RevokedSerial("0c", NOW - timedelta(hours=3), 3),
    RevokedSerial("0d", NOW - timedelta(hours=4), 4),
    RevokedSerial("0e", NOW - timedelta(hours=5), 5),
    RevokedSerial("0f", NOW - timedelta(hours=6), 9),
]


def reason_of(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return None


async def test_full_crl_carries_entries_reasons_and_extensions(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, certificate = ca
    draft = CrlDraft(certificate, 42, NOW, NOW + timedelta(hours=24), ENTRIES, SCOPE, DELTA)

    [crl] = await sign_crls([draft], key)

    assert crl.is_signature_valid(key.public_key())
    assert crl.issuer == certificate.subject
    assert (crl.last_update_utc, crl.next_update_utc) == (NOW, NOW + timedelta(hours=24))
    listed = {
        format(entry.serial_number, "x"): (entry.revocation_date_utc, reason_of(entry))
        for entry in crl
    }
    assert listed == {
        "a": (NOW - timedelta(hours=1), None),
        "b": (NOW - timedelta(hours=2), x509.ReasonFlags.key_compromise),
        "c": (NOW - timedelta(hours=3), x509.ReasonFlags.affiliation_changed),
        "d": (NOW - timedelta(hours=4), x509.ReasonFlags.superseded),
        "e": (NOW - timedelta(hours=5), x509.ReasonFlags.cessation_of_operation),
        "f": (NOW - timedelta(hours=6), x509.ReasonFlags.privilege_withdrawn),
    }
    extensions = crl.extensions
    assert extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    idp = extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    assert idp.value.full_name == [x509.UniformResourceIdentifier(SCOPE)]
    assert idp.value.only_contains_user_certs
    freshest = extensions.get_extension_for_class(x509.FreshestCRL)
    assert not freshest.critical
    assert freshest.value[0].full_name == [x509.UniformResourceIdentifier(DELTA)]
    with pytest.raises(x509.ExtensionNotFound):
        extensions.get_extension_for_class(x509.DeltaCRLIndicator)


async def test_delta_crl_names_its_base_and_has_no_freshest(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, certificate = ca
    draft = CrlDraft(certificate, 50, NOW, NOW + timedelta(hours=1), ENTRIES[:1], SCOPE, None, 42)

    [crl] = await sign_crls([draft], key)

    indicator = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical and indicator.value.crl_number == 42
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 50
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.FreshestCRL)
    assert [entry.serial_number for entry in crl] == [0x0A]


async def test_reason_outside_published_set_goes_out_unspecified(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, certificate = ca
    odd = [RevokedSerial("77", NOW, 2), RevokedSerial("78", None, None)]
    draft = CrlDraft(certificate, 1, NOW, NOW + timedelta(hours=1), odd)

    [crl] = await sign_crls([draft], key)

    assert [(reason_of(entry), entry.revocation_date_utc) for entry in crl] == [
        (None, NOW),
        (None, NOW),
    ]
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)


@pytest.mark.parametrize(
    ("number", "next_update", "delta_url", "base"),
    [
        (-1, NOW + timedelta(hours=1), None, None),
        (1 << 159, NOW + timedelta(hours=1), None, None),
        (5, NOW, None, None),
        (5, NOW + timedelta(hours=1), DELTA, 4),
        (5, NOW + timedelta(hours=1), None, 6),
    ],
)
def test_draft_with_bad_fields_is_refused(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    number: int,
    next_update: datetime,
    delta_url: str | None,
    base: int | None,
) -> None:
    with pytest.raises(ValueError):
        CrlDraft(ca[1], number, NOW, next_update, (), SCOPE, delta_url, base)


async def test_sign_crls_audits_intent_then_outcome(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    key, certificate = ca
    recorder = Recorder()
    full = CrlDraft(certificate, 9, NOW, NOW + timedelta(hours=2), ENTRIES, SCOPE, DELTA)
    delta = CrlDraft(certificate, 9, NOW, NOW + timedelta(hours=1), (), SCOPE, None, 9)

    await sign_crls([full, delta], key, audit=recorder)

    crls = [
        {"number": 9, "scope": SCOPE, "delta": False, "entries": 6},
        {"number": 9, "scope": SCOPE, "delta": True, "entries": 0},
    ]
    assert [(e.event, e.data) for e in recorder.entries] == [
        ("crl.signing", {"crls": crls}),
        ("crl.signed", {"crls": crls}),
    ]


async def test_sign_crls_with_another_cas_key_signs_and_audits_nothing(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
) -> None:
    other_key, _other = make_ca("Other CA")
    recorder = Recorder()
    draft = CrlDraft(ca[1], 1, NOW, NOW + timedelta(hours=1), ENTRIES)

    with pytest.raises(ValueError, match="does not match"):
        await sign_crls([draft], other_key, audit=recorder)
    assert recorder.entries == []


async def test_openssl_verifies_signed_crl_against_its_ca(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], tmp_path: Path
) -> None:
    key, certificate = ca
    draft = CrlDraft(certificate, 3, NOW, NOW + timedelta(hours=1), ENTRIES, SCOPE, DELTA)
    [crl] = await sign_crls([draft], key)
    (tmp_path / "ca.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "crl.der").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    other = make_ca("Other CA")[1]
    (tmp_path / "other.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))

    def verify(ca_file: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*VERIFY_CRL, "-CAfile", ca_file],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    good = verify("ca.pem")
    assert good.returncode == 0 and "verify OK" in good.stderr, good.stderr
    bad = verify("other.pem")
    assert bad.returncode != 0 and "verify OK" not in bad.stderr
