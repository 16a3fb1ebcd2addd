"""EST message bodies on the wire (RFC 7030 §4, as updated by RFC 8951 §3).

Bodies are base64 of DER both ways. ``Content-Transfer-Encoding: base64`` is
sent for older clients but never required of a request (RFC 8951 §3.2);
line-wrapped base64, PEM armour and, from clients that ignore the encoding
rule, raw DER are all accepted. Responses carry base64 as one unbroken line,
because some clients fail on line breaks. Bodies are capped at 64 KiB.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from collections.abc import Mapping, Sequence

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024

PKCS10 = "application/pkcs10"
PKCS7_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
PKCS8 = "application/pkcs8"
CSRATTRS = "application/csrattrs"

_WHITESPACE = re.compile(rb"\s+")


class EstError(Exception):
    """An EST failure the client sees: a status and a one-line plain-text reason."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """RFC 7030 §4.2.3: errors are human-readable text/plain."""
        headers = {"Cache-Control": "no-store", **self.headers}
        return web.Response(status=self.status, text=self.message + "\n", headers=headers)


async def read_body(request: web.Request) -> bytes:
    """The request body, refusing more than 64 KiB before reading it all.

    :raises EstError: 413 when the body is too large.
    """
    too_large = EstError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY_BYTES + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
    return b"".join(chunks)


def require_content_type(request: web.Request, expected: str) -> None:
    """:raises EstError: 400 naming the media type the operation takes."""
    if "Content-Type" not in request.headers:
        raise EstError(400, f"the request has no Content-Type; send {expected}")
    if request.content_type != expected:
        raise EstError(
            400, f"the request must have Content-Type {expected}, not {request.content_type}"
        )


def decode_base64(body: bytes) -> bytes:
    """DER from base64 text, wrapped or not; raw DER passes through unchanged.

    :raises EstError: 400 when the body is empty or not base64.
    """
    # A DER SEQUENCE this long has a long-form length octet (0x81 or more), a
    # byte base64 text never holds.
    if len(body) > 1 and body[0] == 0x30 and body[1] >= 0x80:
        return body
    text = _WHITESPACE.sub(b"", body)
    if not text:
        raise EstError(400, "the request body is empty")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EstError(400, "the request body is not valid base64") from None


def read_csr(body: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 request from base64 DER or PEM armour (RFC 7030 §4.2.1).

    :raises EstError: 400 when the body holds no readable CSR.
    """
    stripped = body.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(stripped)
        return x509.load_der_x509_csr(decode_base64(body))
    except ValueError:
        raise EstError(400, "the request body is not a PKCS#10 certificate request") from None


def certs_only(certificates: Sequence[x509.Certificate]) -> bytes:
    """A degenerate certs-only PKCS#7 SignedData (RFC 7030 §4.1.3, §4.2.3), DER."""
    return pkcs7.serialize_certificates(list(certificates), serialization.Encoding.DER)


def base64_line(der: bytes) -> bytes:
    return base64.b64encode(der)


def base64_response(der: bytes, content_type: str) -> web.Response:
    """A 200 carrying ``der`` as one line of base64."""
    headers = {
        "Content-Type": content_type,
        "Content-Transfer-Encoding": "base64",
        "Cache-Control": "no-store",
    }
    return web.Response(body=base64_line(der), headers=headers)


def multipart_response(parts: Sequence[tuple[str, bytes]]) -> web.Response:
    """A multipart/mixed 200 whose parts are (content type, DER), each base64 (§4.4.2)."""
    boundary = f"est-{secrets.token_hex(16)}"
    lines: list[bytes] = []
    for content_type, der in parts:
        lines += [
            f"--{boundary}".encode(),
            f"Content-Type: {content_type}".encode(),
            b"Content-Transfer-Encoding: base64",
            b"",
            base64_line(der),
        ]
    lines += [f"--{boundary}--".encode(), b""]
    headers = {
        "Content-Type": f"multipart/mixed; boundary={boundary}",
        "Cache-Control": "no-store",
    }
    return web.Response(body=b"\r\n".join(lines), headers=headers)
