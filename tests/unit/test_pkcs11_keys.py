"""Token key adapters without a token: DigestInfo, signature encoding, refusals, the gate."""

from __future__ import annotations

import copy
import threading

import pytest
from asn1crypto import algos, core
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from pkcs11 import Mechanism

from acme_mt.errors import KeyStoreError
from acme_mt.issuance.signer import SignatureHash, sign, signs_in_place
from acme_mt.keystores.base import SigningKey
from acme_mt.keystores.pkcs11_keys import (
    KeyInfo,
    Pkcs11EcKey,
    Pkcs11RsaKey,
    digest_info,
    ec_public_key,
    spki_fingerprint,
)
from acme_mt.keystores.pkcs11_module import Gate

#: RFC 8017 §9.2, note 1: the DER DigestInfo prefixes for SHA-256, SHA-384 and SHA-512.
RFC8017_PREFIXES = {
    "sha256": "3031300d060960864801650304020105000420",
    "sha384": "3041300d060960864801650304020205000430",
    "sha512": "3051300d060960864801650304020305000440",
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class SoftwareToken:
    """Answers ``sign_raw`` as a PKCS#11 token would, with a key held in memory."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self.key = key
        self.calls: list[tuple[Mechanism, bytes]] = []

    def sign_raw(self, info: KeyInfo, data: bytes, mechanism: Mechanism) -> bytes:
        self.calls.append((mechanism, data))
        if mechanism == Mechanism.ECDSA:
            assert isinstance(self.key, ec.EllipticCurvePrivateKey)
            algorithm = {32: hashes.SHA256(), 48: hashes.SHA384()}[len(data)]
            der = self.key.sign(data, ec.ECDSA(Prehashed(algorithm)))
            r, s = decode_dss_signature(der)
            size = (self.key.curve.key_size + 7) // 8
            return r.to_bytes(size) + s.to_bytes(size)
        assert mechanism == Mechanism.RSA_PKCS and isinstance(self.key, rsa.RSAPrivateKey)
        parsed = algos.DigestInfo.load(data)
        hash_type = _HASHES[parsed["digest_algorithm"]["algorithm"].native]
        return self.key.sign(parsed["digest"].native, padding.PKCS1v15(), Prehashed(hash_type()))


def _info(key_type: str) -> KeyInfo:
    return KeyInfo("t0123", "ca", b"\x01" * 16, key_type, "acme-mt:t0123", "00")


def _ec_key(curve: ec.EllipticCurve) -> tuple[Pkcs11EcKey, SoftwareToken]:
    token = SoftwareToken(ec.generate_private_key(curve))
    assert isinstance(token.key, ec.EllipticCurvePrivateKey)
    return Pkcs11EcKey(token, _info("ec"), token.key.public_key()), token


def _rsa_key() -> tuple[Pkcs11RsaKey, SoftwareToken]:
    token = SoftwareToken(rsa.generate_private_key(65537, 2048))
    assert isinstance(token.key, rsa.RSAPrivateKey)
    return Pkcs11RsaKey(token, _info("rsa-2048"), token.key.public_key()), token


@pytest.mark.parametrize("name", sorted(RFC8017_PREFIXES))
def test_digest_info_matches_rfc8017_prefix(name: str) -> None:
    algorithm = _HASHES[name]()
    digest = bytes(range(algorithm.digest_size))
    assert digest_info(algorithm, digest) == bytes.fromhex(RFC8017_PREFIXES[name]) + digest


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=lambda c: c.name)
def test_ec_adapter_sends_digest_and_returns_verifiable_der(curve: ec.EllipticCurve) -> None:
    key, token = _ec_key(curve)
    algorithm = hashes.SHA384() if curve.key_size == 384 else hashes.SHA256()
    signature = key.sign(b"to be signed", ec.ECDSA(algorithm))

    key.public_key().verify(signature, b"to be signed", ec.ECDSA(algorithm))
    digest = hashes.Hash(algorithm)
    digest.update(b"to be signed")
    assert token.calls == [(Mechanism.ECDSA, digest.finalize())]
    assert (key.curve.name, key.key_size) == (curve.name, curve.key_size)


def test_ec_adapter_hashes_other_algorithms_locally() -> None:
    key, token = _ec_key(ec.SECP256R1())
    signature = key.sign(b"to be signed", ec.ECDSA(hashes.SHA3_256()))

    key.public_key().verify(signature, b"to be signed", ec.ECDSA(hashes.SHA3_256()))
    digest = hashes.Hash(hashes.SHA3_256())
    digest.update(b"to be signed")
    assert token.calls == [(Mechanism.ECDSA, digest.finalize())]


def test_ec_adapter_accepts_prehashed_and_refuses_wrong_length() -> None:
    key, _token = _ec_key(ec.SECP256R1())
    digest = bytes(32)
    signature = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    key.public_key().verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    with pytest.raises(ValueError):
        key.sign(bytes(31), ec.ECDSA(Prehashed(hashes.SHA256())))


def test_ec_adapter_refuses_deterministic_signing_and_key_agreement() -> None:
    key, token = _ec_key(ec.SECP256R1())
    with pytest.raises(UnsupportedAlgorithm):
        key.sign(b"x", ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    with pytest.raises(UnsupportedAlgorithm):
        key.exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key())
    assert token.calls == []


def test_rsa_adapter_signs_pkcs1v15_over_digest_info() -> None:
    key, token = _rsa_key()
    signature = key.sign(b"to be signed", padding.PKCS1v15(), hashes.SHA256())

    key.public_key().verify(signature, b"to be signed", padding.PKCS1v15(), hashes.SHA256())
    [(mechanism, payload)] = token.calls
    assert mechanism == Mechanism.RSA_PKCS
    assert payload.startswith(bytes.fromhex(RFC8017_PREFIXES["sha256"]))
    assert key.key_size == 2048


def test_rsa_adapter_refuses_pss_and_decryption() -> None:
    key, token = _rsa_key()
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    with pytest.raises(UnsupportedAlgorithm):
        key.sign(b"x", pss, hashes.SHA256())
    with pytest.raises(UnsupportedAlgorithm):
        key.decrypt(b"x", padding.PKCS1v15())
    assert token.calls == []


@pytest.mark.parametrize("make", [lambda: _ec_key(ec.SECP256R1())[0], lambda: _rsa_key()[0]])
def test_adapters_never_export_and_copy_to_themselves(make) -> None:  # type: ignore[no-untyped-def]
    key = make()
    with pytest.raises(KeyStoreError, match="cannot be exported"):
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    with pytest.raises(KeyStoreError):
        key.private_numbers()
    assert copy.copy(key) is key
    assert copy.deepcopy(key) is key


@pytest.mark.parametrize(
    ("curve", "params"),
    [
        (ec.SECP256R1(), "06082a8648ce3d030107"),  # RFC 5480 §2.1.1.1 named curves
        (ec.SECP384R1(), "06052b81040022"),
    ],
    ids=["p256", "p384"],
)
def test_ec_public_key_unwraps_octet_string_and_accepts_raw_point(
    curve: ec.EllipticCurve, params: str
) -> None:
    # A raw point starts with 0x04 like an OCTET STRING; many points cover the
    # cases where its next byte also looks like a length.
    for _ in range(25):
        public = ec.generate_private_key(curve).public_key()
        point = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert ec_public_key(bytes.fromhex(params), core.OctetString(point).dump()) == public
        assert ec_public_key(bytes.fromhex(params), point) == public
    assert len(spki_fingerprint(public)) == 64


def test_ec_public_key_malformed_point_raises_keystore_error() -> None:
    with pytest.raises(KeyStoreError, match="malformed EC point"):
        ec_public_key(bytes.fromhex("06082a8648ce3d030107"), b"\x04\x02\x01\x02")
    with pytest.raises(KeyStoreError, match="malformed EC point"):
        ec_public_key(bytes.fromhex("06082a8648ce3d030107"), b"\x04" + bytes(64))


def test_ec_public_key_refuses_curves_we_do_not_use() -> None:
    params = bytes.fromhex("06052b81040023")  # secp521r1
    with pytest.raises(KeyStoreError, match="curve"):
        ec_public_key(params, b"\x04" + bytes(132))


def test_key_info_describes_without_secrets() -> None:
    info = KeyInfo("t0123", "ca", bytes.fromhex("ab" * 16), "ec-p256", "acme-mt:t0123", "ff")
    assert info.describe() == {
        "partition": "t0123",
        "label": "ca",
        "key_id": "ab" * 16,
        "key_type": "ec-p256",
        "token": "acme-mt:t0123",
        "spki_sha256": "ff",
    }


def test_gate_exclusive_waits_for_calls_and_holds_back_new_ones() -> None:
    gate = Gate(serial=False)
    order: list[str] = []
    gate.enter()
    exclusive_started = threading.Event()

    def reinitialise() -> None:
        exclusive_started.set()
        with gate.exclusive():
            order.append("exclusive")

    def late_call() -> None:
        with gate.shared():
            order.append("late call")

    writer = threading.Thread(target=reinitialise)
    writer.start()
    exclusive_started.wait(5)
    for _ in range(5000):  # the writer is queued once it counts itself
        if gate._waiting:
            break
        threading.Event().wait(0.001)
    reader = threading.Thread(target=late_call)
    reader.start()
    order.append("first call ends")
    gate.leave()
    writer.join(5)
    reader.join(5)

    assert order == ["first call ends", "exclusive", "late call"]


class _ThreadRecordingBuilder:
    """A Signable that notes which thread signed and returns the signature."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def sign(self, private_key: SigningKey, algorithm: SignatureHash) -> bytes:
        self.threads.append(threading.get_ident())
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        return private_key.sign(b"tbs", ec.ECDSA(algorithm))


async def test_token_keys_sign_off_the_loop_and_memory_ec_keys_in_place() -> None:
    token_key, token = _ec_key(ec.SECP256R1())
    memory_key = ec.generate_private_key(ec.SECP256R1())
    builder = _ThreadRecordingBuilder()

    on_token = await sign(builder, token_key)
    in_memory = await sign(builder, memory_key)

    token_key.public_key().verify(on_token, b"tbs", ec.ECDSA(hashes.SHA256()))
    memory_key.public_key().verify(in_memory, b"tbs", ec.ECDSA(hashes.SHA256()))
    assert builder.threads[0] != threading.get_ident()
    assert builder.threads[1] == threading.get_ident()
    assert not signs_in_place(token_key)
    assert not signs_in_place(rsa.generate_private_key(65537, 2048))
    assert token.calls
