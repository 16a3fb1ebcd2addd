"""A live server on the PostgreSQL store: ACME issuance, a crash during finalize, an outage.

The server runs as ``acme-mt serve`` in a subprocess with ``[store] backend =
"postgres"`` and a superuser DSN, so it makes and serves as its own roles. The
crash test stops the server the moment a serial is pending signature (SIGSTOP,
so the moment cannot pass), kills it with SIGKILL and starts it again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conformance.dns_server import LoopbackDnsServer
from tests.support.acme import AcmeTestClient, make_csr
from tests.support.flow import authorize_http01, issue, random_name, wait_status
from tests.support.live import Http01Responder, LiveServer, free_port, server_env
from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.asyncio(loop_scope="function")

ORDERS_UNDER_LOAD = 24


def postgres_env(dsn: str, secrets_file: Path | None) -> dict[str, str]:
    env = {"ACME_MT_STORE_BACKEND": "postgres", "ACME_MT_STORE_DSN": dsn}
    if secrets_file is not None:
        env["ACME_MT_STORE_SECRETS_FILE"] = str(secrets_file)
    return env


def start_server(
    data_dir: Path,
    dns_server: LoopbackDnsServer,
    responder: Http01Responder,
    tlsalpn_port: int,
    extra_env: dict[str, str],
) -> LiveServer:
    https_port, http_port = free_port(), free_port()
    env = server_env(
        data_dir,
        https_port,
        http_port,
        dns_server.resolver_address,
        responder.port,
        tlsalpn_port,
        extra_env,
    )
    server = LiveServer(data_dir, https_port, http_port, env)
    server.start()
    return server


@pytest.fixture
def pg_server(
    postgres_cluster: PostgresCluster,
    tmp_path: Path,
    dns_server: LoopbackDnsServer,
    http01_responder: Http01Responder,
    tlsalpn_port: int,
) -> Iterator[tuple[LiveServer, str]]:
    dsn = postgres_cluster.fresh_database("live")
    extra = postgres_env(dsn, postgres_cluster.secrets_file)
    server = start_server(tmp_path, dns_server, http01_responder, tlsalpn_port, extra)
    try:
        yield server, dsn
    finally:
        server.stop()


async def new_client(server: LiveServer, session: aiohttp.ClientSession) -> AcmeTestClient:
    client = AcmeTestClient(session, server.directory_url("default"), server.ssl_context())
    await client.load_directory()
    return client


async def tenant_schema(dsn: str, slug: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        schema = await conn.fetchval(
            "SELECT schema_name FROM acme_mt.tenant_stores WHERE slug = $1", slug
        )
    finally:
        await conn.close()
    return str(schema)


async def test_issue_certificate_on_postgres(
    pg_server: tuple[LiveServer, str],
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
) -> None:
    server, dsn = pg_server
    client = await new_client(server, http_session)
    assert (await client.new_account()).status == 201
    name = random_name()

    _order, _url, chain = await issue(client, http01_responder, [name])

    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    serial = format(leaf.serial_number, "x")
    schema = await tenant_schema(dsn, "default")
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchrow(
            f"SELECT status, der FROM {schema}.certificates WHERE serial = $1", serial
        )
    finally:
        await conn.close()
    assert stored is not None and stored["status"] == "valid"
    assert x509.load_der_x509_certificate(stored["der"]) == leaf
    assert not (server.data_dir / "tenants").exists()
    verified = server.cli_json("audit", "verify", "default")
    assert verified["ok"] is True and verified["records"] > 0


async def test_kid_requests_on_postgres_take_each_nonce_once(
    pg_server: tuple[LiveServer, str],
    http_session: aiohttp.ClientSession,
) -> None:
    server, _dsn = pg_server
    client = await new_client(server, http_session)
    assert (await client.new_account()).status == 201
    url = client.directory["newOrder"]
    payload = {"identifiers": [{"type": "dns", "value": random_name()}]}
    nonce = await client.nonce()
    no_nonce = await client.post_raw(url, json.dumps(client.sign(url, payload, None)).encode())
    first = await client.post_raw(url, json.dumps(client.sign(url, payload, nonce)).encode())
    again = await client.post_raw(url, json.dumps(client.sign(url, payload, nonce)).encode())

    assert (no_nonce.status, first.status, again.status) == (400, 201, 400)
    assert json.loads(again.body)["type"] == "urn:ietf:params:acme:error:badNonce"
    assert json.loads(no_nonce.body)["type"] == "urn:ietf:params:acme:error:badNonce"
    assert again.headers["Replay-Nonce"]
    assert first.location is not None
    assert (await client.post(first.location, None)).status == 200


async def prepare_ready_orders(
    client: AcmeTestClient, responder: Http01Responder, count: int
) -> list[tuple[str, dict[str, object], str]]:
    """``count`` ready orders of one name each: (order URL, order, name)."""
    ready = []
    for _ in range(count):
        name = random_name()
        reply = await client.post(
            client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
        )
        assert reply.status == 201, reply.body
        order = reply.json()
        for authz_url in order["authorizations"]:
            await authorize_http01(client, responder, authz_url)
        assert reply.location is not None
        ready.append((reply.location, order, name))
    return ready


async def finalize(client: AcmeTestClient, order: dict[str, object], name: str) -> int:
    csr, _key = make_csr([name])
    reply = await client.post(str(order["finalize"]), {"csr": jose.b64encode(csr).decode()})
    return reply.status


#: How long the statements a killed server had already sent get to finish.
SETTLE_SECONDS = 1.0
KILL_ATTEMPTS = 3


def signal_all(pids: list[int], number: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)


async def stop_while_pending(
    server: LiveServer, dsn: str, schema: str, deadline: float
) -> set[str] | None:
    """Freeze the server once a serial is pending and, if one still is, kill it (SIGKILL).

    Returns the serials still pending once the statements the server had sent
    before it froze have finished (a completion already on its way commits
    all the same), or None when no serial was ever seen pending.
    """
    assert server.process is not None
    pids = server.processes()  # the supervisor and its workers, all at once
    loop = asyncio.get_running_loop()
    conn = await asyncpg.connect(dsn)
    pending = f"SELECT serial FROM {schema}.certificates WHERE status = 'pending'"
    try:
        while loop.time() < deadline:
            if await conn.fetch(pending):
                signal_all(pids, signal.SIGSTOP)
                if await conn.fetch(pending):
                    signal_all(pids, signal.SIGKILL)
                    server.process.wait(10)
                    await asyncio.sleep(SETTLE_SECONDS)
                    return {row["serial"] for row in await conn.fetch(pending)}
                signal_all(pids, signal.SIGCONT)
            await asyncio.sleep(0.001)
    finally:
        await conn.close()
    return None


async def finalize_all_while_killing(
    server: LiveServer,
    dsn: str,
    schema: str,
    client: AcmeTestClient,
    orders: list[tuple[str, dict[str, object], str]],
) -> set[str] | None:
    """Finalize every order at once, killing the server while a serial is pending."""
    session = client.session
    workers = [
        AcmeTestClient(
            session, client.directory_url, client.ssl_context, key=client.key, kid=client.kid
        )
        for _ in orders
    ]
    for worker in workers:
        worker.directory = client.directory
    deadline = asyncio.get_running_loop().time() + 60
    watcher = asyncio.create_task(stop_while_pending(server, dsn, schema, deadline))
    await asyncio.gather(
        *(finalize(w, order, name) for w, (_url, order, name) in zip(workers, orders, strict=True)),
        return_exceptions=True,
    )
    return await watcher


async def test_kill_during_finalize_under_load_then_restart(
    pg_server: tuple[LiveServer, str],
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
) -> None:
    server, dsn = pg_server
    schema = await tenant_schema(dsn, "default")
    stranded: set[str] | None = None
    for _attempt in range(KILL_ATTEMPTS):
        client = await new_client(server, http_session)
        assert (await client.new_account()).status == 201
        orders = await prepare_ready_orders(client, http01_responder, ORDERS_UNDER_LOAD)
        stranded = await finalize_all_while_killing(server, dsn, schema, client, orders)
        assert stranded is not None, "no serial was ever seen pending"
        if stranded:
            break
        # Every pending serial's completion was already on its way: try again.
        server.start()
    assert stranded, f"every kill came after the completions were sent ({KILL_ATTEMPTS} tries)"

    server.start()
    restarted = await new_client(server, http_session)
    conn = await asyncpg.connect(dsn)
    try:
        counts = await conn.fetchrow(
            f"SELECT count(*) FILTER (WHERE status = 'valid' AND der IS NULL) AS valid_without_der,"
            f" count(*) FILTER (WHERE status = 'pending') AS pending FROM {schema}.certificates"
        )
        abandoned = await conn.fetch(
            f"SELECT serial FROM {schema}.certificates WHERE status = 'abandoned'"
        )
    finally:
        await conn.close()
    assert dict(counts) == {"valid_without_der": 0, "pending": 0}
    assert stranded <= {row["serial"] for row in abandoned}

    restarted.key, restarted.kid = client.key, client.kid
    statuses = []
    for url, _order, name in orders:
        current = (await restarted.post(url)).json()
        statuses.append(current["status"])
        if current["status"] == "ready":
            assert await finalize(restarted, current, name) == 200
            current = await wait_status(restarted, url, {"valid", "invalid"})
        assert current["status"] == "valid", current
        download = await restarted.post(current["certificate"])
        assert download.status == 200
        leaf = x509.load_pem_x509_certificates(download.body)[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [name]
    assert "processing" not in statuses
    assert statuses.count("ready") >= len(stranded)
    assert server.cli_json("audit", "verify", "default")["ok"] is True


async def test_postgres_down_answers_503_and_recovers(
    own_cluster: PostgresCluster,
    tmp_path: Path,
    dns_server: LoopbackDnsServer,
    http01_responder: Http01Responder,
    tlsalpn_port: int,
    http_session: aiohttp.ClientSession,
) -> None:
    extra = postgres_env(own_cluster.dsn, None)
    server = start_server(tmp_path, dns_server, http01_responder, tlsalpn_port, extra)
    try:
        client = await new_client(server, http_session)
        assert (await client.new_account()).status == 201
        order_request = {"identifiers": [{"type": "dns", "value": random_name()}]}

        own_cluster.stop("immediate")
        down = await client.post(client.directory["newOrder"], order_request)
        own_cluster.start()
        recovered = None
        for _ in range(50):
            recovered = await client.post(client.directory["newOrder"], order_request)
            if recovered.status != 503:
                break
            await asyncio.sleep(0.2)
        _order, _url, chain = await issue(client, http01_responder, [random_name()])
        assert server.process is not None
        never_restarted = server.process.poll() is None
    finally:
        server.stop()

    assert down.status == 503
    assert down.headers["Content-Type"].startswith("application/problem+json")
    assert down.json() == {
        "type": "urn:ietf:params:acme:error:serverInternal",
        "detail": "The service is temporarily unavailable",
        "status": 503,
    }
    assert down.headers["Retry-After"] == "5"
    assert recovered is not None and recovered.status == 201, recovered
    assert never_restarted
    assert "BEGIN CERTIFICATE" in chain


async def ocsp_get(session: aiohttp.ClientSession, server: LiveServer, path: str) -> bytes:
    async with session.get(f"{server.http_url}{path}") as reply:
        assert reply.status == 200
        return await reply.read()


async def test_two_replicas_answer_ocsp_with_the_same_bytes_and_share_revocations(
    pg_server: tuple[LiveServer, str],
    postgres_cluster: PostgresCluster,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    dns_server: LoopbackDnsServer,
    tlsalpn_port: int,
) -> None:
    """Two servers on one database and one key directory stand for two replicas."""
    first, dsn = pg_server
    second = start_server(
        first.data_dir,
        dns_server,
        http01_responder,
        tlsalpn_port,
        postgres_env(dsn, postgres_cluster.secrets_file),
    )
    try:
        client = await new_client(first, http_session)
        assert (await client.new_account()).status == 201
        _order, _url, chain = await issue(client, http01_responder, [random_name()])
        leaf, ca = x509.load_pem_x509_certificates(chain.encode())[:2]
        request = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA1()).build()
        encoded = base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()
        path = f"/default/ocsp/{urllib.parse.quote(encoded, safe='')}"

        async def answers() -> tuple[bytes, bytes]:
            for _ in range(60):
                one = await ocsp_get(http_session, first, path)
                two = await ocsp_get(http_session, second, path)
                if one == two:
                    return one, two
                await asyncio.sleep(0.5)
            return one, two

        one, two = await answers()
        assert one == two
        assert ocsp.load_der_ocsp_response(one).certificate_status == ocsp.OCSPCertStatus.GOOD

        der = leaf.public_bytes(serialization.Encoding.DER)
        payload = {"certificate": jose.b64encode(der).decode(), "reason": 1}
        revoked = await client.post(client.directory["revokeCert"], payload)
        assert revoked.status == 200, revoked.body
        for _ in range(60):
            status = ocsp.load_der_ocsp_response(await ocsp_get(http_session, second, path))
            if status.certificate_status == ocsp.OCSPCertStatus.REVOKED:
                break
            await asyncio.sleep(0.5)
        assert status.certificate_status == ocsp.OCSPCertStatus.REVOKED
        one, two = await answers()
        assert one == two
    finally:
        second.stop()
