"""A live server whose CA keys live on SoftHSM2 tokens: ACME issuance, and onboarding by CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from acme_mt.keystores.pkcs11 import Pkcs11KeyStore
from acme_mt.keystores.secrets import SECRETS_FILE, PinStore
from conformance.dns_server import LoopbackDnsServer
from tests.support.acme import AcmeTestClient
from tests.support.flow import issue, random_name
from tests.support.live import Http01Responder, LiveServer, running_server
from tests.support.softhsm import SoftHsm, softhsm_fixture  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio(loop_scope="function")

KEY_MARKER = b"PRIVATE KEY"


@pytest.fixture(scope="module")
def hsm_server(
    tmp_path_factory: pytest.TempPathFactory,
    softhsm: SoftHsm,
    dns_server: LoopbackDnsServer,
    http01_responder: Http01Responder,
    tlsalpn_port: int,
) -> Iterator[LiveServer]:
    extra_env = {
        **softhsm.env,
        "ACME_MT_KEYSTORE_BACKEND": "pkcs11",
        "ACME_MT_KEYSTORE_MODULE": softhsm.module,
    }
    yield from running_server(
        tmp_path_factory.mktemp("acme-mt-hsm"),
        dns_server.resolver_address,
        http01_responder.port,
        tlsalpn_port,
        extra_env,
    )


@pytest.fixture
async def token_store(softhsm: SoftHsm, hsm_server: LiveServer) -> AsyncIterator[Pkcs11KeyStore]:
    """This process's own view of the server's tokens, with the PINs the server generated."""
    store = Pkcs11KeyStore(softhsm.module, PinStore(hsm_server.data_dir, {}))
    yield store
    await store.close()


async def issue_for(
    server: LiveServer, session: aiohttp.ClientSession, responder: Http01Responder, slug: str
) -> list[x509.Certificate]:
    client = AcmeTestClient(session, server.directory_url(slug), server.ssl_context())
    await client.load_directory()
    assert (await client.new_account()).status == 201
    _order, _url, chain = await issue(client, responder, [random_name()])
    return x509.load_pem_x509_certificates(chain.encode())


async def partition_holding(store: Pkcs11KeyStore, data_dir: Path, ca: x509.Certificate) -> str:
    """The partition whose token holds the key of ``ca``, found among the generated PINs."""
    names = json.loads((data_dir / SECRETS_FILE).read_text())
    for name in names:
        partition = await store.open_partition(name)
        for label in ("ca", "root"):
            try:
                key = await partition.get(label)
            except Exception:
                continue
            if key.public_key() == ca.public_key():
                return name
    raise AssertionError("no token holds the CA key")


def openssl_verify(
    tmp_path: Path, certs: list[x509.Certificate]
) -> subprocess.CompletedProcess[str]:
    from cryptography.hazmat.primitives.serialization import Encoding

    paths = []
    for name, cert in zip(("leaf", "ca", "root"), certs, strict=True):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(cert.public_bytes(Encoding.PEM))
        paths.append(str(path))
    return subprocess.run(
        ["openssl", "verify", "-CAfile", paths[2], "-untrusted", paths[1], paths[0]],
        capture_output=True,
        text=True,
    )


async def test_acme_issuance_signed_by_ca_key_on_token(
    hsm_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    token_store: Pkcs11KeyStore,
    tmp_path: Path,
) -> None:
    leaf, ca, root = await issue_for(hsm_server, http_session, http01_responder, "default")

    assert openssl_verify(tmp_path, [leaf, ca, root]).returncode == 0
    ca_partition = await partition_holding(token_store, hsm_server.data_dir, ca)
    root_partition = await partition_holding(token_store, hsm_server.data_dir, root)
    assert ca_partition.startswith("t")
    assert root_partition == "_provider"
    assert not (hsm_server.data_dir / "keys").exists()
    assert not (hsm_server.data_dir / "kek").exists()


async def test_tenant_created_by_cli_is_served_without_restart(
    hsm_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    token_store: Pkcs11KeyStore,
    tmp_path: Path,
) -> None:
    await issue_for(hsm_server, http_session, http01_responder, "default")  # the server is busy
    await asyncio.to_thread(
        hsm_server.create_tenant, "hsm-onboarded", 'require_eab = false\nca_key_type = "rsa-2048"\n'
    )

    leaf, ca, root = await issue_for(hsm_server, http_session, http01_responder, "hsm-onboarded")

    assert openssl_verify(tmp_path, [leaf, ca, root]).returncode == 0
    assert isinstance(ca.public_key(), rsa.RSAPublicKey)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    assert (await partition_holding(token_store, hsm_server.data_dir, ca)).startswith("t")
    assert hsm_server.process is not None and hsm_server.process.poll() is None


async def test_live_data_dir_holds_no_private_key_but_the_listeners(
    hsm_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    await issue_for(hsm_server, http_session, http01_responder, "default")
    holders = sorted(
        str(path.relative_to(hsm_server.data_dir))
        for path in hsm_server.data_dir.rglob("*")
        if path.is_file() and KEY_MARKER in path.read_bytes()
    )
    # The HTTPS listener's key is a file by design: Python's ssl reads keys from files.
    assert holders == ["tls/key.pem"]


async def test_failing_token_answers_503_for_its_tenant_only(
    hsm_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
) -> None:
    from acme_mt.storage.sqlite import SqliteBackend

    await asyncio.to_thread(hsm_server.create_tenant, "hsm-broken", "require_eab = false\n")
    backend = SqliteBackend(hsm_server.data_dir)
    registry = await backend.open_registry()
    record = await registry.get_tenant("hsm-broken")
    await registry.close()
    await backend.close()
    assert record is not None
    secrets_path = hsm_server.data_dir / SECRETS_FILE
    pins = json.loads(secrets_path.read_text())
    good_pin = pins[record.id]["user"]
    pins[record.id]["user"] = "wrong-" + good_pin
    secrets_path.write_text(json.dumps(pins))
    url = hsm_server.directory_url("hsm-broken")
    try:
        async with http_session.get(url, ssl=hsm_server.ssl_context()) as resp:
            assert resp.status == 503
            assert resp.headers["Content-Type"].startswith("application/problem+json")
            assert resp.headers["Retry-After"]
            body = await resp.json(content_type=None)
            assert body["type"] == "urn:ietf:params:acme:error:serverInternal"
            assert good_pin not in json.dumps(body)
        # Every other tenant goes on.
        await issue_for(hsm_server, http_session, http01_responder, "default")
    finally:
        pins[record.id]["user"] = good_pin
        secrets_path.write_text(json.dumps(pins))
    status = 503
    for _ in range(60):
        async with http_session.get(url, ssl=hsm_server.ssl_context()) as resp:
            status = resp.status
        if status == 200:
            break
        await asyncio.sleep(0.5)
    assert status == 200
