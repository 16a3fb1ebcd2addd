"""CRLs from a live server, checked with openssl: signatures, sharding, revocation,
deltas, the root CRL, tenant isolation and uniform 404s (RFC 5280 §5)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from josepy.b64 import b64encode

from tests.support.acme import AcmeTestClient
from tests.support.flow import issue, random_name
from tests.support.live import Http01Responder, LiveServer

pytestmark = pytest.mark.asyncio(loop_scope="function")

ALPHA, BETA, HIDDEN = "crl-alpha", "crl-beta", "crl-hidden"
ALPHA_SHARDS = 4
#: How long a revocation may take to reach the CRL before the test gives up.
LISTING_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def crl_tenants(live_server: LiveServer) -> None:
    live_server.create_tenant(ALPHA, f"require_eab = false\ncrl_shards = {ALPHA_SHARDS}\n")
    live_server.create_tenant(BETA, "require_eab = false\n")
    live_server.create_tenant(HIDDEN, "require_eab = false\n")
    live_server.cli("tenant", "suspend", HIDDEN)


@dataclass
class Issued:
    certificate: x509.Certificate
    client: AcmeTestClient

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    @property
    def crl_url(self) -> str:
        points = self.certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        [name] = points.value[0].full_name or []
        return str(name.value)

    async def revoke(self, reason: int = 1) -> None:
        der = self.certificate.public_bytes(Encoding.DER)
        payload = {"certificate": b64encode(der).decode(), "reason": reason}
        reply = await self.client.post(self.client.directory["revokeCert"], payload)
        assert reply.status == 200, reply.body


async def issue_in(
    live_server: LiveServer, session: aiohttp.ClientSession, responder: Http01Responder, slug: str
) -> Issued:
    client = AcmeTestClient(session, live_server.directory_url(slug), live_server.ssl_context())
    await client.load_directory()
    assert (await client.new_account()).status == 201
    _order, _url, chain = await issue(client, responder, [random_name()])
    return Issued(x509.load_pem_x509_certificates(chain.encode())[0], client)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


async def fetch_crl(session: aiohttp.ClientSession, url: str) -> x509.CertificateRevocationList:
    status, content_type, body = await get(session, url)
    assert (status, content_type) == (200, "application/pkix-crl"), url
    return x509.load_der_x509_crl(body)


def crl_url(live_server: LiveServer, slug: str, shard: int, delta: bool = False) -> str:
    return f"{live_server.http_url}/{slug}/crl/{shard}{'-delta' if delta else ''}.crl"


def serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {entry.serial_number for entry in crl}


def number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


async def wait_listed(
    session: aiohttp.ClientSession, url: str, serial: int
) -> x509.CertificateRevocationList:
    """Poll the CRL at ``url`` until it lists ``serial`` (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LISTING_TIMEOUT
    while True:
        crl = await fetch_crl(session, url)
        if serial in serials(crl) or loop.time() > deadline:
            return crl
        await asyncio.sleep(0.25)


class Files:
    """PEM files in a test's directory, for openssl."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def crl(self, name: str, crl: x509.CertificateRevocationList) -> str:
        path = self.directory / f"{name}.crl.pem"
        path.write_bytes(crl.public_bytes(Encoding.PEM))
        return str(path)

    def certificate(self, name: str, certificate: x509.Certificate) -> str:
        path = self.directory / f"{name}.pem"
        path.write_bytes(certificate.public_bytes(Encoding.PEM))
        return str(path)

    def raw(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


def openssl_verify(
    flags: Sequence[str], root: str, tenant_ca: str, crls: Sequence[str], leaf: str
) -> subprocess.CompletedProcess[str]:
    """``openssl verify`` of a leaf against the root, through the tenant CA, with CRLs."""
    args = ["verify", *flags, "-CAfile", root, "-untrusted", tenant_ca]
    for crl in crls:
        args += ["-CRLfile", crl]
    return openssl(*args, leaf)


async def chain_of(session: aiohttp.ClientSession, live_server: LiveServer, slug: str) -> bytes:
    status, _type, body = await get(session, f"{live_server.http_url}/{slug}/ca.pem")
    assert status == 200
    return body


async def test_every_shard_and_delta_verifies_with_its_own_ca_only(
    live_server: LiveServer, http_session: aiohttp.ClientSession, crl_tenants: None, tmp_path: Path
) -> None:
    files = Files(tmp_path)
    alpha_chain = files.raw("alpha-chain.pem", await chain_of(http_session, live_server, ALPHA))
    beta_chain = files.raw("beta-chain.pem", await chain_of(http_session, live_server, BETA))

    for shard in range(ALPHA_SHARDS):
        for delta in (False, True):
            crl = await fetch_crl(http_session, crl_url(live_server, ALPHA, shard, delta))
            path = files.crl(f"alpha-{shard}-{delta}", crl)
            own = openssl("crl", "-verify", "-noout", "-in", path, "-CAfile", alpha_chain)
            other = openssl("crl", "-verify", "-noout", "-in", path, "-CAfile", beta_chain)
            assert own.returncode == 0 and "verify OK" in own.stderr, (shard, own.stderr)
            assert other.returncode != 0 and "verify OK" not in other.stderr, shard


async def test_revoked_certificate_is_listed_in_its_shard_and_fails_openssl_verify(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    crl_tenants: None,
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    revoked = await issue_in(live_server, http_session, http01_responder, ALPHA)
    good = await issue_in(live_server, http_session, http01_responder, ALPHA)
    chain = x509.load_pem_x509_certificates(await chain_of(http_session, live_server, ALPHA))
    tenant_ca, root = files.certificate("ca", chain[0]), files.certificate("root", chain[1])
    shard_urls = [crl_url(live_server, ALPHA, shard) for shard in range(ALPHA_SHARDS)]
    assert revoked.crl_url in shard_urls and good.crl_url in shard_urls

    await revoked.revoke(reason=1)
    listing = await wait_listed(http_session, revoked.crl_url, revoked.serial)

    assert revoked.serial in serials(listing)
    entry = listing.get_revoked_certificate_by_serial_number(revoked.serial)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.key_compromise
    for url in shard_urls:
        if url != revoked.crl_url:
            assert revoked.serial not in serials(await fetch_crl(http_session, url)), url

    def verify(leaf: Issued, crl: x509.CertificateRevocationList) -> str:
        crl_file = files.crl(f"{leaf.serial:x}", crl)
        leaf_file = files.certificate(f"leaf-{leaf.serial:x}", leaf.certificate)
        result = openssl_verify(["-crl_check"], root, tenant_ca, [crl_file], leaf_file)
        return f"{result.returncode} {result.stdout} {result.stderr}"

    assert "certificate revoked" in verify(revoked, listing)
    good_crl = await fetch_crl(http_session, good.crl_url)
    assert verify(good, good_crl).startswith("0 ")
    other_url = next(url for url in shard_urls if url != good.crl_url)
    out_of_scope = verify(good, await fetch_crl(http_session, other_url))
    assert "different CRL scope" in out_of_scope


async def test_full_crl_points_at_a_delta_built_on_it(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    crl_tenants: None,
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    good = await issue_in(live_server, http_session, http01_responder, ALPHA)
    shard = int(good.crl_url.rsplit("/", 1)[1].removesuffix(".crl"))
    chain = x509.load_pem_x509_certificates(await chain_of(http_session, live_server, ALPHA))

    for _ in range(10):  # a re-signing between the two downloads moves the base on
        full = await fetch_crl(http_session, good.crl_url)
        delta = await fetch_crl(http_session, crl_url(live_server, ALPHA, shard, delta=True))
        base = delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        if base.value.crl_number == number(full):
            break
        await asyncio.sleep(0.5)

    assert base.critical and base.value.crl_number == number(full) <= number(delta)
    freshest = full.extensions.get_extension_for_class(x509.FreshestCRL).value
    assert freshest[0].full_name == [
        x509.UniformResourceIdentifier(crl_url(live_server, ALPHA, shard, delta=True))
    ]
    scope = x509.IssuingDistributionPoint
    assert delta.extensions.get_extension_for_class(scope).value.full_name == [
        x509.UniformResourceIdentifier(good.crl_url)
    ]
    result = openssl_verify(
        ["-crl_check", "-extended_crl", "-use_deltas"],
        files.certificate("root", chain[1]),
        files.certificate("ca", chain[0]),
        [files.crl("full", full), files.crl("delta", delta)],
        files.certificate("leaf", good.certificate),
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_one_tenants_crls_never_list_anothers_serials(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    crl_tenants: None,
) -> None:
    in_alpha = await issue_in(live_server, http_session, http01_responder, ALPHA)
    in_beta = await issue_in(live_server, http_session, http01_responder, BETA)
    assert in_beta.crl_url == crl_url(live_server, BETA, 0)

    await in_alpha.revoke(reason=4)
    await in_beta.revoke(reason=5)
    beta_crl = await wait_listed(http_session, in_beta.crl_url, in_beta.serial)
    alpha_crl = await wait_listed(http_session, in_alpha.crl_url, in_alpha.serial)

    assert in_beta.serial in serials(beta_crl) and in_alpha.serial in serials(alpha_crl)
    assert in_alpha.serial not in serials(beta_crl)
    for shard in range(ALPHA_SHARDS):
        for delta in (False, True):
            crl = await fetch_crl(http_session, crl_url(live_server, ALPHA, shard, delta))
            assert in_beta.serial not in serials(crl), (shard, delta)


async def test_root_crl_verifies_and_completes_the_chain_check(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    crl_tenants: None,
    tmp_path: Path,
) -> None:
    files = Files(tmp_path)
    good = await issue_in(live_server, http_session, http01_responder, BETA)
    chain = x509.load_pem_x509_certificates(await chain_of(http_session, live_server, BETA))
    root, tenant_ca = files.certificate("root", chain[1]), files.certificate("ca", chain[0])
    root_crl = await fetch_crl(http_session, f"{live_server.http_url}/root.crl")
    leaf_crl = await fetch_crl(http_session, good.crl_url)

    root_crl_file = files.crl("root", root_crl)
    signed = openssl("crl", "-verify", "-noout", "-in", root_crl_file, "-CAfile", root)
    result = openssl_verify(
        ["-crl_check_all"],
        root,
        tenant_ca,
        [root_crl_file, files.crl("leaf", leaf_crl)],
        files.certificate("leaf", good.certificate),
    )

    assert signed.returncode == 0 and "verify OK" in signed.stderr, signed.stderr
    assert root_crl.issuer == chain[1].subject
    assert result.returncode == 0, result.stdout + result.stderr


async def test_unchanged_crl_answers_304_to_its_etag(
    live_server: LiveServer, http_session: aiohttp.ClientSession, crl_tenants: None
) -> None:
    url = crl_url(live_server, BETA, 0)
    async with http_session.get(url) as first:
        etag = first.headers["ETag"]
        assert "max-age=" in first.headers["Cache-Control"]
        assert first.headers["Last-Modified"]

    async with http_session.get(url, headers={"If-None-Match": etag}) as again:
        assert again.status in (200, 304)
        if again.status == 200:  # re-signed in between; the new version has a new tag
            assert again.headers["ETag"] != etag
        else:
            assert again.headers["ETag"] == etag and await again.read() == b""


async def test_missing_crls_of_any_tenant_answer_alike(
    live_server: LiveServer, http_session: aiohttp.ClientSession, crl_tenants: None
) -> None:
    base = live_server.http_url
    paths = [
        f"/{ALPHA}/crl/{ALPHA_SHARDS}.crl",
        f"/{ALPHA}/crl/{ALPHA_SHARDS}-delta.crl",
        f"/{ALPHA}/crl/abc.crl",
        f"/{ALPHA}/crl/01.crl",
        f"/{BETA}/crl/1.crl",
        f"/{HIDDEN}/crl/0.crl",
        "/no-such-tenant/crl/0.crl",
        "/no-such-tenant/crl/0-delta.crl",
    ]

    answers = {path: await get(http_session, base + path) for path in paths}

    assert set(answers.values()) == {(404, "text/plain; charset=utf-8", b"Not Found")}, answers
