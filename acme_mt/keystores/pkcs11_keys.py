"""Private keys that stay on a PKCS#11 token, in the shape pyca/cryptography signs with.

cryptography's certificate, CRL and OCSP builders call ``key.sign`` on any
``EllipticCurvePrivateKey`` or ``RSAPrivateKey``. These subclasses hash
locally and send only the digest to the token: ECDSA as ``CKM_ECDSA`` (SoftHSM
has no hashed ECDSA mechanism), answered as raw r||s and re-encoded as the DER
Ecdsa-Sig-Value of RFC 5480 §2.2 (RFC 5758 §3.2); RSA as ``CKM_RSA_PKCS`` over
the DigestInfo of RFC 8017 §9.2, built by asn1crypto. Public keys are read from
the token once (``CKA_EC_POINT`` arrives wrapped in a DER OCTET STRING) and
are real cryptography public keys. Members that would export the private key
raise ``KeyStoreError``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from asn1crypto import algos, core, keys
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import Mechanism

from acme_mt.errors import KeyStoreError

#: What cryptography's ``sign`` methods accept as data.
Buffer = bytes | bytearray | memoryview
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
}
_CURVE_KEY_TYPES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}
#: hashlib is quicker than cryptography's Hash for the one-shot digests of every signature.
_ONE_SHOT: dict[type, Callable[[Buffer], Any]] = {
    hashes.SHA256: hashlib.sha256,
    hashes.SHA384: hashlib.sha384,
    hashes.SHA512: hashlib.sha512,
}


@dataclass(frozen=True)
class KeyInfo:
    """Where a key lives and how to recognise it: what a key ceremony record needs."""

    partition: str
    label: str
    key_id: bytes
    key_type: str
    token_label: str
    fingerprint: str

    def describe(self) -> dict[str, str]:
        """The key's identity for an audit record; nothing secret."""
        return {
            "partition": self.partition,
            "label": self.label,
            "key_id": self.key_id.hex(),
            "key_type": self.key_type,
            "token": self.token_label,
            "spki_sha256": self.fingerprint,
        }


class TokenSigner(Protocol):
    """The partition side of a token key: one raw signature with the key ``info`` names."""

    def sign_raw(self, info: KeyInfo, data: bytes, mechanism: Mechanism) -> bytes: ...


def spki_fingerprint(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, in hex."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def ec_public_key(ec_params: bytes, ec_point: bytes) -> ec.EllipticCurvePublicKey:
    """Rebuild a public key from CKA_EC_PARAMS and CKA_EC_POINT (PKCS#11 v2.40 §2.3.3)."""
    params = keys.ECDomainParameters.load(ec_params)
    curve_type = _CURVES.get(str(params.chosen.native)) if params.name == "named" else None
    if curve_type is None:
        raise KeyStoreError("the token key is on a curve this server does not use")
    curve = curve_type()
    # An uncompressed point also starts with 0x04, the OCTET STRING tag: tell the
    # two apart by length, for modules that return the point unwrapped.
    point = ec_point
    if len(ec_point) != 2 * ((curve.key_size + 7) // 8) + 1:
        try:
            point = core.OctetString.load(ec_point, strict=True).native
        except ValueError:
            raise KeyStoreError("the token returned a malformed EC point") from None
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise KeyStoreError("the token returned a malformed EC point") from None


def ec_key_type(public_key: ec.EllipticCurvePublicKey) -> str:
    """The ``ec-p256``/``ec-p384`` key type name of a public key."""
    return _CURVE_KEY_TYPES[public_key.curve.name]


def _digest(data: Buffer, algorithm: Any) -> tuple[bytes, hashes.HashAlgorithm]:
    """Hash ``data`` unless the caller already did (``Prehashed``)."""
    one_shot = _ONE_SHOT.get(type(algorithm))
    if one_shot is not None:
        return one_shot(data).digest(), algorithm
    if isinstance(algorithm, Prehashed):
        if len(data) != algorithm.digest_size:
            raise ValueError("the prehashed digest has the wrong length")
        return bytes(data), algorithm._algorithm
    if not isinstance(algorithm, hashes.HashAlgorithm):
        raise UnsupportedAlgorithm("a hash algorithm is needed to sign")
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize(), algorithm


@lru_cache(maxsize=16)
def _digest_info_prefix(hash_name: str, digest_size: int) -> bytes:
    """The DER DigestInfo (RFC 8017 §9.2) up to the digest bytes, NULL parameters included."""
    try:
        algorithm = algos.DigestAlgorithm(
            {"algorithm": hash_name.replace("-", "_"), "parameters": core.Null()}
        )
    except ValueError:
        raise UnsupportedAlgorithm(f"no DigestInfo for {hash_name}") from None
    encoded = algos.DigestInfo({"digest_algorithm": algorithm, "digest": bytes(digest_size)})
    return bytes(encoded.dump()[:-digest_size])


def digest_info(algorithm: hashes.HashAlgorithm, digest: bytes) -> bytes:
    """DER DigestInfo of ``digest``, the input of RSASSA-PKCS1-v1_5 with ``CKM_RSA_PKCS``."""
    return _digest_info_prefix(algorithm.name, len(digest)) + digest


def _no_export() -> KeyStoreError:
    return KeyStoreError("the private key stays on its token and cannot be exported")


class Pkcs11EcKey(ec.EllipticCurvePrivateKey):
    """An ECDSA key on a token that cryptography's builders sign with."""

    def __init__(
        self, signer: TokenSigner, info: KeyInfo, public: ec.EllipticCurvePublicKey
    ) -> None:
        self._signer = signer
        self.info = info
        self._public = public

    def __repr__(self) -> str:
        return f"<Pkcs11EcKey {self.info.partition}/{self.info.label} {self.info.key_type}>"

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        """ECDSA over the locally computed digest; DER Ecdsa-Sig-Value out."""
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("only ECDSA signatures are offered")
        if getattr(signature_algorithm, "deterministic_signing", False):
            raise UnsupportedAlgorithm("the token does not sign deterministically (RFC 6979)")
        digest, _ = _digest(data, signature_algorithm.algorithm)
        raw = self._signer.sign_raw(self.info, digest, Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half]), int.from_bytes(raw[half:]))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise UnsupportedAlgorithm("token keys sign only; key agreement is not offered")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise _no_export()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise _no_export()

    def __copy__(self) -> Pkcs11EcKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Pkcs11EcKey:
        return self


class Pkcs11RsaKey(rsa.RSAPrivateKey):
    """An RSA key on a token that cryptography's builders sign with (PKCS#1 v1.5)."""

    def __init__(self, signer: TokenSigner, info: KeyInfo, public: rsa.RSAPublicKey) -> None:
        self._signer = signer
        self.info = info
        self._public = public

    def __repr__(self) -> str:
        return f"<Pkcs11RsaKey {self.info.partition}/{self.info.label} {self.info.key_type}>"

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def sign(
        self,
        data: Buffer,
        padding: asym_padding.AsymmetricPadding,
        algorithm: Any,
    ) -> bytes:
        """RSASSA-PKCS1-v1_5 (RFC 8017 §8.2) over the locally computed digest."""
        # Limitation: RSASSA-PSS is not offered; CKM_RSA_PKCS_PSS over the
        # digest, with the hash and salt from the padding, would add it.
        if not isinstance(padding, asym_padding.PKCS1v15):
            raise UnsupportedAlgorithm("token RSA keys sign with PKCS#1 v1.5 only")
        digest, hash_algorithm = _digest(data, algorithm)
        payload = digest_info(hash_algorithm, digest)
        return self._signer.sign_raw(self.info, payload, Mechanism.RSA_PKCS)

    def decrypt(self, ciphertext: bytes, padding: asym_padding.AsymmetricPadding) -> bytes:
        raise UnsupportedAlgorithm("token keys sign only; decryption is not offered")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise _no_export()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        raise _no_export()

    def __copy__(self) -> Pkcs11RsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Pkcs11RsaKey:
        return self


TokenKey = Pkcs11EcKey | Pkcs11RsaKey
