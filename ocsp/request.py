"""OCSP requests as they arrive over HTTP (RFC 6960 §4.1, appendix A.1; RFC 5019 §2.1).

A POST carries the DER request as its body; a GET carries it base64-encoded as
the last part of the path. Clients and proxies send the base64 characters
``+``, ``/`` and ``=`` raw or percent-encoded, and some join the responder URL
and the request with a doubled ``/``, so the path is percent-decoded once,
leading slashes are dropped (base64 of a DER SEQUENCE always starts with
``M``), and a missing padding is tolerated. The URL-safe alphabet is accepted
as well, since nothing else would be meant by ``-`` or ``_``.

The request is parsed with asn1crypto, which, unlike cryptography's loader,
reads every CertID of a request that names several certificates (§4.1.1).
Everything wrong with the input raises ``MalformedRequest``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from urllib.parse import unquote

from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from cryptography.x509.ocsp import OCSPResponseStatus

from acme_mt.issuance.ocsp import CERT_ID_HASHES

logger = logging.getLogger(__name__)

#: Requests larger than this are refused before parsing; real ones are ~100 bytes.
MAX_REQUEST_BYTES = 64 * 1024
#: CertIDs one request may name; each costs a look-up and a line in the signature.
MAX_CERT_IDS = 32
#: RFC 8954 §2.1: a nonce is 1 to 32 octets.
MAX_NONCE_BYTES = 32
#: A serial of more than 20 octets cannot have been issued (RFC 5280 §4.1.2.2).
MAX_SERIAL_BITS = 160

_URL_SAFE = str.maketrans("-_", "+/")
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


class OcspError(Exception):
    """A request answered with an unsuccessful OCSPResponseStatus (RFC 6960 §4.2.1)."""

    status = OCSPResponseStatus.INTERNAL_ERROR


class MalformedRequest(OcspError):
    """The request is not a well-formed OCSP request."""

    status = OCSPResponseStatus.MALFORMED_REQUEST


class Unauthorized(OcspError):
    """The request names an issuer this responder does not answer for."""

    status = OCSPResponseStatus.UNAUTHORIZED


class TryLater(OcspError):
    """The responder cannot answer now; the client should retry."""

    status = OCSPResponseStatus.TRY_LATER


@dataclass(frozen=True)
class CertRequest:
    """One CertID of a request (§4.1.1)."""

    hash_name: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    #: The CertID as sent when its hash parameters are not NULL, so that the
    #: response can echo it; empty for the usual encoding.
    cert_id_der: bytes = b""

    @property
    def cache_key(self) -> tuple[str, int, bytes]:
        return (self.hash_name, self.serial, self.cert_id_der)


@dataclass(frozen=True)
class OcspQuery:
    """A parsed request: the certificates it asks about and its nonce (RFC 8954)."""

    certs: tuple[CertRequest, ...]
    nonce: bytes | None = None


def decode_get_path(tail: str) -> bytes:
    """The DER request in the raw (still percent-encoded) path after ``/ocsp/``.

    :raises MalformedRequest: not base64, or too large.
    """
    try:
        text = unquote(tail, errors="strict").lstrip("/").translate(_URL_SAFE)
    except UnicodeDecodeError:
        raise MalformedRequest("the GET request is not base64") from None
    if not text or len(text) > MAX_REQUEST_BYTES * 4 // 3 + 4:
        raise MalformedRequest("empty or oversized GET request")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRequest("the GET request is not base64") from None


def parse_request(der: bytes) -> OcspQuery:
    """Read every CertID and the nonce of a DER OCSPRequest.

    Signed requests are accepted and their signature ignored (§4.1.2: a
    responder need not require them). Unknown extensions are ignored.

    :raises MalformedRequest: bad DER, no CertID, too many, an unsupported
        hash, an impossible serial or a nonce of the wrong size.
    """
    if not der or len(der) > MAX_REQUEST_BYTES:
        raise MalformedRequest("empty or oversized request")
    try:
        request = asn1_ocsp.OCSPRequest.load(der, strict=True)
        tbs = request["tbs_request"]
        entries = list(tbs["request_list"])
        if not entries or len(entries) > MAX_CERT_IDS:
            raise MalformedRequest(f"a request names 1 to {MAX_CERT_IDS} certificates")
        certs = tuple(_cert_request(entry["req_cert"]) for entry in entries)
        nonce = _nonce(tbs["request_extensions"])
    except OcspError:
        raise
    except _PARSE_ERRORS as exc:
        logger.debug("unparseable OCSP request: %s", exc)
        raise MalformedRequest("the request is not DER of an OCSPRequest") from None
    return OcspQuery(certs, nonce)


def _cert_request(cert_id: asn1_ocsp.CertId) -> CertRequest:
    algorithm = cert_id["hash_algorithm"]
    hash_name = algorithm["algorithm"].native
    if hash_name not in CERT_ID_HASHES:
        raise MalformedRequest("unsupported CertID hash algorithm")
    serial = cert_id["serial_number"].native
    if not isinstance(serial, int) or serial <= 0 or serial.bit_length() > MAX_SERIAL_BITS:
        raise MalformedRequest("impossible serial number")
    canonical = isinstance(algorithm["parameters"], asn1_core.Null)
    return CertRequest(
        hash_name=hash_name,
        issuer_name_hash=bytes(cert_id["issuer_name_hash"].native),
        issuer_key_hash=bytes(cert_id["issuer_key_hash"].native),
        serial=serial,
        cert_id_der=b"" if canonical else bytes(cert_id.dump()),
    )


def _nonce(extensions: asn1_ocsp.TBSRequestExtensions) -> bytes | None:
    """The value inside the nonce extension's OCTET STRING (RFC 8954 §2.1), if any."""
    for extension in extensions:
        if extension["extn_id"].dotted != "1.3.6.1.5.5.7.48.1.2":
            continue
        value = asn1_core.OctetString.load(extension["extn_value"].contents, strict=True).native
        if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_NONCE_BYTES:
            raise MalformedRequest(f"a nonce is 1 to {MAX_NONCE_BYTES} octets")
        return value
    return None
