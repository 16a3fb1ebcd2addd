"""OCSP request decoding and parsing (RFC 6960 §4.1, appendix A.1; RFC 5019 §5; RFC 8954)."""

from __future__ import annotations

import base64
import os
import random
import re
from urllib.parse import quote

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ocsp.request import (
    MAX_CERT_IDS,
    MAX_REQUEST_BYTES,
    CertRequest,
    MalformedRequest,
    decode_get_path,
    parse_request,
)

NAME_HASH = bytes(range(20))
KEY_HASH = bytes(range(20, 40))
DER = serialization.Encoding.DER


def request(
    serial: int = 0x1234, algorithm: hashes.HashAlgorithm | None = None, nonce: bytes | None = None
) -> bytes:
    algorithm = algorithm or hashes.SHA1()
    size = algorithm.digest_size
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        NAME_HASH[:size].ljust(size, b"n"), KEY_HASH[:size].ljust(size, b"k"), serial, algorithm
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def several(serials: list[int]) -> bytes:
    """A request naming several certificates, which cryptography cannot build."""
    entries = [
        {
            "req_cert": {
                "hash_algorithm": {"algorithm": "sha1"},
                "issuer_name_hash": NAME_HASH,
                "issuer_key_hash": KEY_HASH,
                "serial_number": serial,
            }
        }
        for serial in serials
    ]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": {"request_list": entries}}).dump())


def _sequence(content: bytes) -> bytes:
    assert len(content) < 128
    return b"\x30" + bytes([len(content)]) + content


def without_null_parameters(serial: int) -> bytes:
    """A request whose SHA-1 AlgorithmIdentifier has no parameters at all.

    asn1crypto and cryptography both always write NULL parameters for SHA-1,
    so this DER is put together by hand: the OID 1.3.14.3.2.26, the two
    hashes as OCTET STRINGs, and a one-octet serial.
    """
    algorithm = _sequence(bytes.fromhex("06052b0e03021a"))
    hashes_ = b"\x04\x14" + NAME_HASH + b"\x04\x14" + KEY_HASH
    cert_id = _sequence(algorithm + hashes_ + bytes([0x02, 0x01, serial]))
    return _sequence(_sequence(_sequence(_sequence(cert_id))))


def test_parse_sha1_request_reads_the_cert_id() -> None:
    query = parse_request(request())
    assert query.certs == (CertRequest("sha1", NAME_HASH, KEY_HASH, 0x1234),)
    assert query.nonce is None


def test_parse_sha256_request_names_its_hash() -> None:
    query = parse_request(request(algorithm=hashes.SHA256()))
    assert query.certs[0].hash_name == "sha256"
    assert len(query.certs[0].issuer_key_hash) == 32


def test_parse_request_with_several_cert_ids_reads_them_all() -> None:
    query = parse_request(several([1, 2, 0xABCDEF]))
    assert [cert.serial for cert in query.certs] == [1, 2, 0xABCDEF]
    assert all(cert.cert_id_der == b"" for cert in query.certs)


def test_parse_cert_id_without_null_parameters_keeps_its_bytes_for_the_echo() -> None:
    der = without_null_parameters(7)
    cert = parse_request(der).certs[0]
    assert (cert.hash_name, cert.serial) == ("sha1", 7)
    assert cert.cert_id_der
    assert cert.cert_id_der in der
    assert cert.cache_key == ("sha1", 7, cert.cert_id_der)


def test_parse_nonce_reads_the_value_inside_the_octet_string() -> None:
    assert parse_request(request(nonce=b"n" * 16)).nonce == b"n" * 16


@pytest.mark.parametrize("size", [0, 33])
def test_parse_nonce_of_wrong_size_is_malformed(size: int) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(request(nonce=b"x" * size))


def test_parse_unsupported_hash_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        parse_request(request(algorithm=hashes.SHA224()))


def test_parse_too_many_cert_ids_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        parse_request(several(list(range(1, MAX_CERT_IDS + 2))))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x30\x00",
        b"\x30\x03\x02\x01\x01",
        request()[:-1],
        request()[:10],
        request() + b"\x00",
        os.urandom(64),
        b"\x30\x84\xff\xff\xff\xff",
        b"\x30" * (MAX_REQUEST_BYTES + 1),
        several([]),
    ],
)
def test_parse_bad_der_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(body)


def test_parse_impossible_serial_is_malformed() -> None:
    with pytest.raises(MalformedRequest):
        parse_request(several([0]))
    with pytest.raises(MalformedRequest):
        parse_request(several([1 << 170]))


def _with_every_special_character() -> tuple[bytes, str]:
    rng = random.Random(5)
    for _ in range(20_000):
        der = request(rng.getrandbits(rng.randrange(8, 128)) | 1)
        text = base64.b64encode(der).decode()
        if "+" in text and "/" in text and text.endswith("="):
            return der, text
    raise AssertionError("no request with +, / and =")


def test_decode_get_accepts_every_encoding_of_plus_slash_equals() -> None:
    der, text = _with_every_special_character()
    encoded = quote(text, safe="")
    variants = [
        text,
        encoded,
        re.sub("%[0-9A-F]{2}", lambda escape: escape.group(0).lower(), encoded),
        text.replace("+", "%2B"),
        text.replace("/", "%2F"),
        text.replace("=", "%3D"),
        "/" + text,
        "//" + encoded,
        text.rstrip("="),
        text.replace("+", "-").replace("/", "_"),
    ]
    for variant in variants:
        assert decode_get_path(variant) == der, variant


def test_decode_get_keeps_doubled_slashes_inside_the_base64() -> None:
    der = next(
        request(s) for s in range(1, 50_000) if "//" in base64.b64encode(request(s)).decode()
    )
    assert decode_get_path(base64.b64encode(der).decode()) == der


@pytest.mark.parametrize(
    "tail", ["", "/", "!!!!", "%ZZ", "%FF%FE", "M", "ME=I", "a b", "%00", "A" * 100_000]
)
def test_decode_get_bad_input_is_malformed(tail: str) -> None:
    with pytest.raises(MalformedRequest):
        decode_get_path(tail)
