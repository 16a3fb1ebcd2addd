"""OCSP against a live server (RFC 6960, RFC 5019), driven by ``openssl ocsp`` and curl.

Certificates come from the ACME test client; their status is asked for by
POST and by GET, checked against the tenant's chain, and never against another
tenant's. Bad input of every kind answers malformedRequest or a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import aiohttp
import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from acme_mt.issuance.ocsp import issuer_hashes
from conformance.dns_server import LoopbackDnsServer
from tests.support.acme import AcmeTestClient
from tests.support.flow import issue, random_name
from tests.support.live import Http01Responder, LiveServer, free_port, server_env

pytestmark = pytest.mark.asyncio(loop_scope="function")

ALPHA, BETA, OFF, NO_NONCE = "ocsp-alpha", "ocsp-beta", "ocsp-off", "ocsp-no-nonce"
CACHE_CONTROL = re.compile(r"^max-age=(\d+), public, no-transform, must-revalidate$")


TENANT_POLICIES = {
    ALPHA: "require_eab = false\n",
    BETA: "require_eab = false\n",
    OFF: "require_eab = false\nocsp = false\n",
    NO_NONCE: "require_eab = false\nocsp_nonce = false\n",
}


@pytest.fixture(scope="module")
def ocsp_tenants(live_server: LiveServer) -> None:
    """The tenants these tests use, made once per session's server (other modules share them)."""
    for slug, policy in TENANT_POLICIES.items():
        if live_server.cli("tenant", "show", slug, check=False).returncode != 0:
            live_server.create_tenant(slug, policy)


def http_base(live_server: LiveServer) -> str:
    # The server listens on 127.0.0.1 only; "localhost" may resolve to ::1 first.
    return f"http://127.0.0.1:{live_server.http_port}"


def responder_url(live_server: LiveServer, slug: str) -> str:
    return f"{http_base(live_server)}/{slug}/ocsp"


@dataclass
class Issued:
    """A leaf and the PEM files openssl needs to ask about it."""

    slug: str
    leaf: x509.Certificate
    leaf_pem: Path
    ca_pem: Path
    trust_pem: Path
    client: AcmeTestClient

    @property
    def der(self) -> bytes:
        return self.leaf.public_bytes(serialization.Encoding.DER)


async def tenant_files(
    live_server: LiveServer, session: aiohttp.ClientSession, slug: str, where: Path
) -> tuple[Path, Path]:
    """The tenant CA alone, and the root plus the tenant CA, as PEM files."""
    async with session.get(f"{http_base(live_server)}/{slug}/ca.pem") as resp:
        chain = await resp.text()
    ca = where / f"{slug}-ca.pem"
    ca.write_bytes(x509.load_pem_x509_certificates(chain.encode())[0].public_bytes(_PEM))
    trust = where / f"{slug}-trust.pem"
    trust.write_text(chain)
    return ca, trust


_PEM = serialization.Encoding.PEM


async def issue_leaf(
    live_server: LiveServer,
    session: aiohttp.ClientSession,
    responder: Http01Responder,
    slug: str,
    where: Path,
) -> Issued:
    client = AcmeTestClient(session, live_server.directory_url(slug), live_server.ssl_context())
    await client.load_directory()
    assert (await client.new_account()).status == 201
    _order, _url, chain = await issue(client, responder, [random_name()])
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    leaf_pem = where / f"{slug}-{leaf.serial_number:x}.pem"
    leaf_pem.write_bytes(leaf.public_bytes(_PEM))
    ca, trust = await tenant_files(live_server, session, slug, where)
    return Issued(slug, leaf, leaf_pem, ca, trust, client)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "ocsp", *map(str, args)], capture_output=True, text=True, timeout=60
    )


def ask(issued: Issued, url: str, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    """``openssl ocsp`` about the leaf; ``extra`` options go first (a digest must)."""
    return openssl(
        *extra, "-issuer", issued.ca_pem, "-cert", issued.leaf_pem, "-url", url,
        "-CAfile", issued.trust_pem,
    )  # fmt: skip


def request_der(issued: Issued, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    ca = x509.load_pem_x509_certificate(issued.ca_pem.read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(issued.leaf, ca, algorithm or hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def curl_get(url: str, out: Path, *headers: str) -> tuple[int, dict[str, str]]:
    """GET through curl (which sends the path as given); status and headers."""
    command = ["curl", "-sS", "--path-as-is", "-o", str(out), "-D", "-", "--max-time", "30"]
    for header in headers:
        command += ["-H", header]
    result = subprocess.run([*command, url], capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    status = int(lines[0].split()[1])
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return status, {k.lower(): v for k, v in fields.items()}


def _issuer_hashes(ca: x509.Certificate) -> tuple[bytes, bytes]:
    """SHA-1 issuerNameHash and issuerKeyHash of a tenant CA, for requests by serial."""
    return issuer_hashes(ca, "sha1")


def status_line(result: subprocess.CompletedProcess[str], pem: Path) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith(f"{pem}:"))


async def test_ocsp_post_for_issued_certificate_is_good_and_verifies(
    live_server: LiveServer,
    ocsp_tenants: None,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tmp_path: Path,
) -> None:
    issued = await issue_leaf(live_server, http_session, http01_responder, ALPHA, tmp_path)
    for extra in ((), ("-sha256",), ("-no_nonce",)):
        result = ask(issued, responder_url(live_server, ALPHA), *extra)
        assert result.returncode == 0, result.stderr
        assert "Response verify OK" in result.stderr
        assert status_line(result, issued.leaf_pem) == f"{issued.leaf_pem}: good"
        assert "WARNING" not in result.stderr


async def test_ocsp_get_through_curl_is_presigned_with_rfc5019_headers(
    live_server: LiveServer,
    ocsp_tenants: None,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tmp_path: Path,
) -> None:
    issued = await issue_leaf(live_server, http_session, http01_responder, ALPHA, tmp_path)
    encoded = base64.b64encode(request_der(issued)).decode()
    url = f"{responder_url(live_server, ALPHA)}/{quote(encoded, safe='')}"
    body = tmp_path / "response.der"

    status, headers = curl_get(url, body)
    assert status == 200
    assert headers["content-type"] == "application/ocsp-response"
    max_age = CACHE_CONTROL.match(headers["cache-control"])
    assert max_age is not None and 12 * 3600 <= int(max_age.group(1)) <= 24 * 3600
    assert headers["etag"].startswith('"') and headers["last-modified"] and headers["expires"]
    response = ocsp.load_der_ocsp_response(body.read_bytes())
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == issued.leaf.serial_number
    assert response.next_update_utc is not None and response.this_update_utc is not None
    assert response.next_update_utc - response.this_update_utc == timedelta(hours=24)

    checked = openssl(
        "-respin", body, "-issuer", issued.ca_pem, "-cert", issued.leaf_pem,
        "-CAfile", issued.trust_pem, "-no_nonce",
    )  # fmt: skip
    assert "Response verify OK" in checked.stderr, checked.stderr
    assert status_line(checked, issued.leaf_pem) == f"{issued.leaf_pem}: good"

    again, _ = curl_get(url, tmp_path / "again.der")
    assert again == 200 and (tmp_path / "again.der").read_bytes() == body.read_bytes()
    not_modified, same = curl_get(url, tmp_path / "304.der", f"If-None-Match: {headers['etag']}")
    assert not_modified == 304
    assert same["etag"] == headers["etag"]
    empty = tmp_path / "304.der"  # curl writes no file for an empty body
    assert not empty.exists() or empty.read_bytes() == b""


async def test_ocsp_revoked_certificate_is_resigned_revoked_with_reason(
    live_server: LiveServer,
    ocsp_tenants: None,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tmp_path: Path,
) -> None:
    issued = await issue_leaf(live_server, http_session, http01_responder, ALPHA, tmp_path)
    encoded = base64.b64encode(request_der(issued)).decode()
    get_url = f"{responder_url(live_server, ALPHA)}/{encoded}"
    status, _ = curl_get(get_url, tmp_path / "before.der")
    assert status == 200
    before = ocsp.load_der_ocsp_response((tmp_path / "before.der").read_bytes())
    assert before.certificate_status == ocsp.OCSPCertStatus.GOOD

    payload = {"certificate": jose.b64encode(issued.der).decode(), "reason": 1}
    reply = await issued.client.post(issued.client.directory["revokeCert"], payload)
    assert reply.status == 200, reply.body

    # The pre-signed response is replaced within seconds; give it up to ten.
    after = before
    for _ in range(100):
        curl_get(get_url, tmp_path / "after.der")
        after = ocsp.load_der_ocsp_response((tmp_path / "after.der").read_bytes())
        if after.certificate_status != ocsp.OCSPCertStatus.GOOD:
            break
        await asyncio.sleep(0.1)
    assert after.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert after.revocation_reason == x509.ReasonFlags.key_compromise
    assert after.revocation_time_utc is not None

    result = ask(issued, responder_url(live_server, ALPHA))
    assert "Response verify OK" in result.stderr, result.stderr
    assert status_line(result, issued.leaf_pem) == f"{issued.leaf_pem}: revoked"
    assert "Reason: keyCompromise" in result.stdout


async def test_ocsp_made_up_serial_is_unknown_and_not_cached(
    live_server: LiveServer,
    ocsp_tenants: None,
    http_session: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    ca, trust = await tenant_files(live_server, http_session, ALPHA, tmp_path)
    serial = "0x" + os.urandom(15).hex()
    result = openssl(
        "-issuer", ca, "-serial", serial, "-url", responder_url(live_server, ALPHA),
        "-CAfile", trust,
    )  # fmt: skip
    assert "Response verify OK" in result.stderr, result.stderr
    assert f"{serial}: unknown" in result.stdout

    request = tmp_path / "unknown.req"
    openssl("-issuer", ca, "-serial", serial, "-no_nonce", "-reqout", request)
    encoded = base64.b64encode(request.read_bytes()).decode()
    status, headers = curl_get(f"{responder_url(live_server, ALPHA)}/{encoded}", tmp_path / "u")
    assert status == 200
    assert headers["cache-control"] == "no-store"
    assert "etag" not in headers
    response = ocsp.load_der_ocsp_response((tmp_path / "u").read_bytes())
    assert response.certificate_status == ocsp.OCSPCertStatus.UNKNOWN


async def test_ocsp_response_of_one_tenant_never_verifies_with_another_tenants_ca(
    live_server: LiveServer,
    ocsp_tenants: None,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tmp_path: Path,
) -> None:
    issued = await issue_leaf(live_server, http_session, http01_responder, ALPHA, tmp_path)
    beta_ca, beta_trust = await tenant_files(live_server, http_session, BETA, tmp_path)
    response_file = tmp_path / "alpha.der"
    ask(issued, responder_url(live_server, ALPHA), "-no_nonce", "-respout", response_file)

    refused = openssl("-respin", response_file, "-CAfile", beta_trust, "-no_nonce")
    assert "Response Verify Failure" in refused.stderr, refused.stderr
    partial = openssl("-respin", response_file, "-CAfile", beta_ca, "-partial_chain")
    assert "Response Verify Failure" in partial.stderr, partial.stderr
    accepted = openssl("-respin", response_file, "-CAfile", issued.trust_pem, "-no_nonce")
    assert "Response verify OK" in accepted.stderr, accepted.stderr

    response = ocsp.load_der_ocsp_response(response_file.read_bytes())
    signer = response.certificates[0]
    signer.verify_directly_issued_by(x509.load_pem_x509_certificate(issued.ca_pem.read_bytes()))
    with pytest.raises(ValueError):
        signer.verify_directly_issued_by(x509.load_pem_x509_certificate(beta_ca.read_bytes()))
    usages = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert signer.extensions.get_extension_for_class(x509.OCSPNoCheck)
    lifetime = signer.not_valid_after_utc - signer.not_valid_before_utc
    assert lifetime <= timedelta(days=7, hours=1)


async def test_ocsp_other_tenant_asked_about_a_certificate_answers_unauthorized(
    live_server: LiveServer,
    ocsp_tenants: None,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tmp_path: Path,
) -> None:
    issued = await issue_leaf(live_server, http_session, http01_responder, ALPHA, tmp_path)
    result = ask(issued, responder_url(live_server, BETA))
    assert "Responder Error: unauthorized (6)" in result.stdout + result.stderr

    # Beta's own CA with alpha's serial: beta never issued it.
    beta_ca, beta_trust = await tenant_files(live_server, http_session, BETA, tmp_path)
    serial = f"0x{issued.leaf.serial_number:x}"
    other = openssl(
        "-issuer", beta_ca, "-serial", serial, "-url", responder_url(live_server, BETA),
        "-CAfile", beta_trust,
    )  # fmt: skip
    assert f"{serial}: unknown" in other.stdout, other.stdout + other.stderr


async def test_ocsp_unknown_tenant_answers_exactly_like_a_tenant_with_ocsp_off(
    live_server: LiveServer,
    ocsp_tenants: None,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tmp_path: Path,
) -> None:
    issued = await issue_leaf(live_server, http_session, http01_responder, OFF, tmp_path)
    assert not any(
        d.access_method == x509.oid.AuthorityInformationAccessOID.OCSP
        for d in issued.leaf.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
    )
    der = request_der(issued)
    answers = []
    for slug in (OFF, "ocsp-no-such-tenant", "x"):
        async with http_session.post(
            responder_url(live_server, slug),
            data=der,
            headers={"Content-Type": "application/ocsp-request"},
        ) as resp:
            answers.append((resp.status, resp.headers["Content-Type"], await resp.read()))
        encoded = base64.b64encode(der).decode()
        async with http_session.get(f"{responder_url(live_server, slug)}/{encoded}") as resp:
            answers.append((resp.status, resp.headers["Content-Type"], await resp.read()))
    assert len(set(answers)) == 1
    status, content_type, body = answers[0]
    assert (status, content_type) == (200, "application/ocsp-response")
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


async def test_ocsp_nonce_is_echoed_only_where_the_tenant_allows_it(
    live_server: LiveServer,
    ocsp_tenants: None,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tmp_path: Path,
) -> None:
    allowed = await issue_leaf(live_server, http_session, http01_responder, ALPHA, tmp_path)
    result = ask(allowed, responder_url(live_server, ALPHA))
    assert "Response verify OK" in result.stderr and "WARNING" not in result.stderr

    refused = await issue_leaf(live_server, http_session, http01_responder, NO_NONCE, tmp_path)
    result = ask(refused, responder_url(live_server, NO_NONCE))
    assert "WARNING: no nonce in response" in result.stderr, result.stderr
    assert status_line(result, refused.leaf_pem) == f"{refused.leaf_pem}: good"


async def test_ocsp_signer_survives_a_restart(
    tmp_path: Path, dns_server: LoopbackDnsServer, http01_responder: Http01Responder
) -> None:
    https_port, http_port = free_port(), free_port()
    resolver = dns_server.resolver_address
    env = server_env(tmp_path, https_port, http_port, resolver, http01_responder.port, free_port())
    server = LiveServer(tmp_path, https_port, http_port, env)
    signers = []
    for _ in range(2):
        server.start()
        try:
            async with aiohttp.ClientSession() as session:
                url = f"{http_base(server)}/default/ca.crt"
                async with session.get(url) as resp:
                    ca = x509.load_der_x509_certificate(await resp.read())
                request = (
                    ocsp.OCSPRequestBuilder()
                    .add_certificate_by_hash(*_issuer_hashes(ca), 777, hashes.SHA1())
                    .build()
                    .public_bytes(serialization.Encoding.DER)
                )
                async with session.post(responder_url(server, "default"), data=request) as resp:
                    response = ocsp.load_der_ocsp_response(await resp.read())
        finally:
            server.stop()
        assert response.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
        signers.append(response.certificates[0].serial_number)
    assert signers[0] == signers[1]
