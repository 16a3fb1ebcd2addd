"""Bad and oddly encoded OCSP requests against a live server (RFC 6960 appendix A.1,
RFC 5019 §5): every encoding of ``+``, ``/`` and ``=`` in a GET is understood, and
truncated DER, random bytes, oversized bodies and bad base64 answer malformedRequest
or a 4xx, never a 500."""

from __future__ import annotations

import base64
import os
import random
import subprocess
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.integration.test_ocsp_live import (  # noqa: F401 - the fixture
    ALPHA,
    BETA,
    _issuer_hashes,
    http_base,
    ocsp_tenants,
    responder_url,
)
from tests.support.live import LiveServer

pytestmark = [pytest.mark.asyncio(loop_scope="function"), pytest.mark.usefixtures("ocsp_tenants")]


def _unknown_request_with_every_special_character(ca: x509.Certificate) -> tuple[int, str]:
    """A request whose base64 holds ``+``, ``/`` and ``=``: (serial, base64)."""
    rng = random.Random(5)
    for _ in range(100_000):
        serial = rng.getrandbits(rng.randrange(8, 128)) | 1
        builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            *_issuer_hashes(ca), serial, hashes.SHA1()
        )
        encoded = base64.b64encode(builder.build().public_bytes(serialization.Encoding.DER))
        text = encoded.decode()
        if "+" in text and "/" in text and text.endswith("="):
            return serial, text
    raise AssertionError("no request with +, / and = found")


async def test_ocsp_get_accepts_every_encoding_of_plus_slash_and_equals(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    async with http_session.get(f"{http_base(live_server)}/{BETA}/ca.crt") as resp:
        ca = x509.load_der_x509_certificate(await resp.read())
    serial, text = _unknown_request_with_every_special_character(ca)
    base = responder_url(live_server, BETA)
    variants = {
        "raw": text,
        "percent-encoded": quote(text, safe=""),
        "lower-case escapes": quote(text, safe="").replace("%2B", "%2b").replace("%2F", "%2f"),
        "doubled slash": "/" + text,
        "unpadded": text.rstrip("="),
        "url-safe alphabet": text.replace("+", "-").replace("/", "_"),
    }
    for name, path in variants.items():
        result = subprocess.run(
            ["curl", "-sS", "--path-as-is", "--max-time", "30", f"{base}/{path}"],
            capture_output=True,
            check=True,
        )
        response = ocsp.load_der_ocsp_response(result.stdout)
        assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, name
        assert response.serial_number == serial, name
        assert response.certificate_status == ocsp.OCSPCertStatus.UNKNOWN, name


BAD_BODIES = {
    "empty": b"",
    "random": os.urandom(200),
    "not a request": b"\x30\x03\x02\x01\x01",
    "trailing garbage": None,
    "truncated": None,
}


@pytest.mark.parametrize("kind", list(BAD_BODIES))
async def test_ocsp_malformed_post_answers_malformed_request(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    kind: str,
) -> None:
    async with http_session.get(f"{http_base(live_server)}/{ALPHA}/ca.crt") as resp:
        ca = x509.load_der_x509_certificate(await resp.read())
    good = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(*_issuer_hashes(ca), 12345, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    body = BAD_BODIES[kind]
    if kind == "trailing garbage":
        body = good + b"\x00"
    elif kind == "truncated":
        body = good[:-3]
    assert body is not None
    async with http_session.post(responder_url(live_server, ALPHA), data=body) as resp:
        assert resp.status == 200
        answer = ocsp.load_der_ocsp_response(await resp.read())
    assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


async def test_ocsp_oversized_post_is_refused_without_a_server_error(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    body = b"\x30\x84" + os.urandom(70 * 1024)
    async with http_session.post(responder_url(live_server, ALPHA), data=body) as resp:
        assert resp.status == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(70):
            yield os.urandom(1024)

    async with http_session.post(responder_url(live_server, ALPHA), data=chunks()) as resp:
        assert resp.status in (200, 413)
        if resp.status == 200:
            answer = ocsp.load_der_ocsp_response(await resp.read())
            assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize(
    "path",
    ["", "!!!!", "%ZZ", "%FF%FE", "MEIw", "M" * 5000, "AAAA", "..%2F..%2Fca.crt", "a b", "%00"],
)
async def test_ocsp_bad_get_answers_malformed_or_a_client_error(
    live_server: LiveServer, path: str
) -> None:
    url = f"{responder_url(live_server, ALPHA)}/{path.replace(' ', '%20')}"
    result = subprocess.run(
        ["curl", "-sS", "--path-as-is", "--max-time", "30", "-w", "\n%{http_code}", url],
        capture_output=True,
        check=True,
    )
    body, _, code = result.stdout.rpartition(b"\n")
    assert 200 <= int(code) < 500
    if int(code) == 200:
        answer = ocsp.load_der_ocsp_response(body)
        assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
