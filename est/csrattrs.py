"""The CSR attributes a tenant asks EST clients for (RFC 7030 §4.5).

The answer is a DER ``CsrAttrs`` SEQUENCE of ``AttrOrOID`` (§4.5.2). It says
which keys the tenant's default profile accepts: one ``id-ecPublicKey``
attribute whose values are the allowed curves, and the bare ``rsaEncryption``
OID when RSA keys are allowed, each followed by the OID of a signature
algorithm to sign the CSR with.
"""

from __future__ import annotations

import logging

from asn1crypto import algos, core, keys

from acme_mt.tenancy.profiles import Profile

logger = logging.getLogger(__name__)

_CURVE_NAMES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
_EC_SIGNATURES = {"ec-p256": "sha256_ecdsa", "ec-p384": "sha384_ecdsa"}


class AttributeValues(core.SetOf):  # type: ignore[misc]
    _child_spec = core.Any


class CsrAttribute(core.Sequence):  # type: ignore[misc]
    """RFC 7030 §4.5.2 ``Attribute``: a type and a SET of values."""

    _fields = [("type", core.ObjectIdentifier), ("values", AttributeValues)]


class AttrOrOid(core.Choice):  # type: ignore[misc]
    _alternatives = [("oid", core.ObjectIdentifier), ("attribute", CsrAttribute)]


class CsrAttrs(core.SequenceOf):  # type: ignore[misc]
    """RFC 7030 §4.5.2 ``CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID``."""

    _child_spec = AttrOrOid


def _oid(value: str) -> AttrOrOid:
    return AttrOrOid(name="oid", value=core.ObjectIdentifier(value))


def csr_attributes(profile: Profile) -> bytes:
    """The DER ``CsrAttrs`` for a profile's key types, key families in the profile's order."""
    curves = [t for t in profile.key_types if t in _CURVE_NAMES]
    first_rsa = next((t for t in profile.key_types if t.startswith("rsa-")), None)
    items: list[AttrOrOid] = []
    for key_type in profile.key_types:
        if curves and key_type == curves[0]:
            values = [core.ObjectIdentifier(keys.NamedCurve.unmap(_CURVE_NAMES[c])) for c in curves]
            attribute = CsrAttribute(
                {"type": keys.PublicKeyAlgorithmId.unmap("ec"), "values": values}
            )
            items.append(AttrOrOid(name="attribute", value=attribute))
            items.append(_oid(algos.SignedDigestAlgorithmId.unmap(_EC_SIGNATURES[key_type])))
        elif key_type == first_rsa:
            items.append(_oid(keys.PublicKeyAlgorithmId.unmap("rsa")))
            items.append(_oid(algos.SignedDigestAlgorithmId.unmap("sha256_rsa")))
    # Limitation: RSA key sizes are not conveyed, since RFC 7030 defines no
    # attribute for them; a client learns a refused size from the enrollment error.
    der: bytes = CsrAttrs(items).dump()
    return der
