"""Several worker processes behind the listeners behave as one server.

Every request here goes out on a connection of its own, so the kernel hands
each to whichever worker it picks: a nonce is issued by one worker and
redeemed by another, a revocation made by one is answered by all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from conformance.dns_server import LoopbackDnsServer
from tests.support.acme import AcmeTestClient
from tests.support.est import client_context, est_post, make_csr
from tests.support.flow import issue, random_name
from tests.support.live import Http01Responder, LiveServer, process_tree, running_server

WORKERS = 3
ALPHA, BETA = "workers-alpha", "workers-beta"
#: Fresh connections per check; all landing on one worker is a chance of 3 ** -(N - 1).
TRIES = 24


@pytest.fixture(scope="module")
def workers_server(
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: LoopbackDnsServer,
    http01_responder: Http01Responder,
    tlsalpn_port: int,
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("workers-data")
    for server in running_server(
        data_dir,
        dns_server.resolver_address,
        http01_responder.port,
        tlsalpn_port,
        {"ACME_MT_SERVER_WORKERS": str(WORKERS)},
    ):
        for slug in (ALPHA, BETA):
            server.create_tenant(slug, "require_eab = false\n")
        yield server


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A session that opens a new connection for every request."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def client_at(
    server: LiveServer, session: aiohttp.ClientSession, slug: str
) -> AcmeTestClient:
    client = AcmeTestClient(session, server.directory_url(slug), server.ssl_context())
    await client.load_directory()
    return client


def problem_type(reply: Any) -> str:
    return str(reply.json()["type"]).rsplit(":", 1)[-1]


def test_the_configured_number_of_workers_serve_under_one_supervisor(
    workers_server: LiveServer,
) -> None:
    assert len(workers_server.processes()) == 1 + WORKERS
    log = (workers_server.log_path or Path()).read_text()
    assert f"acme-mt serving ({WORKERS} worker processes)" in log


def established_by_process(pids: list[int], port: int) -> dict[int, int]:
    """How many established IPv4 connections to local ``port`` each process holds (/proc)."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(fields[9])
    held: dict[int, int] = {}
    for pid in pids:
        count = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                count += target.startswith("socket:[") and target[8:-1] in inodes
        held[pid] = count
    return held


def test_a_burst_of_connections_is_spread_over_the_workers(workers_server: LiveServer) -> None:
    # Connections that reach the queue together, as a pool of clients starting at once
    # opens them, before any worker wakes: the first to wake must not take them all.
    address = ("127.0.0.1", workers_server.https_port)
    with contextlib.ExitStack() as stack:
        for _ in range(4 * WORKERS):
            stack.enter_context(socket.create_connection(address, timeout=10))
        workers = workers_server.processes()[1:]
        deadline = time.monotonic() + 10
        while True:
            held = established_by_process(workers, workers_server.https_port)
            if sum(held.values()) == 4 * WORKERS or time.monotonic() > deadline:
                break
            time.sleep(0.05)

    assert sum(held.values()) == 4 * WORKERS, held
    assert all(count > 0 for count in held.values()), held


async def test_a_nonce_from_any_worker_redeems_once_at_any_worker(
    workers_server: LiveServer, fresh: aiohttp.ClientSession
) -> None:
    client = await client_at(workers_server, fresh, ALPHA)
    nonces = [await client.nonce() for _ in range(TRIES)]
    assert len(set(nonces)) == TRIES
    url = client.directory["newAccount"]
    signed: list[bytes] = []

    for nonce in nonces:
        key = AcmeTestClient(fresh, client.directory_url, client.ssl_context).key
        body = client.sign(url, {"termsOfServiceAgreed": True}, nonce, key=key, use_jwk=True)
        signed.append(json.dumps(body).encode())
        reply = await client.post_raw(url, signed[-1])
        assert reply.status == 201, reply.body

    for body in signed:
        reply = await client.post_raw(url, body)
        assert (reply.status, problem_type(reply)) == (400, "badNonce")
        assert reply.headers["Replay-Nonce"]


async def test_a_nonce_of_one_tenant_is_refused_at_another_on_every_worker(
    workers_server: LiveServer, fresh: aiohttp.ClientSession
) -> None:
    alpha = await client_at(workers_server, fresh, ALPHA)
    beta = await client_at(workers_server, fresh, BETA)
    url = beta.directory["newAccount"]

    for _ in range(TRIES // 2):
        body = beta.sign(url, {"termsOfServiceAgreed": True}, await alpha.nonce(), use_jwk=True)
        reply = await beta.post_raw(url, json.dumps(body).encode())
        assert (reply.status, problem_type(reply)) == (400, "badNonce")


async def ocsp_status(
    session: aiohttp.ClientSession, url: str, request: bytes
) -> ocsp.OCSPCertStatus:
    headers = {"Content-Type": "application/ocsp-request"}
    async with session.post(url, data=request, headers=headers) as resp:
        assert resp.status == 200
        return ocsp.load_der_ocsp_response(await resp.read()).certificate_status


async def test_a_revocation_made_at_one_worker_is_answered_by_every_worker(
    workers_server: LiveServer,
    fresh: aiohttp.ClientSession,
    http01_responder: Http01Responder,
) -> None:
    client = await client_at(workers_server, fresh, ALPHA)
    assert (await client.new_account()).status == 201
    _order, _url, chain = await issue(client, http01_responder, [random_name()])
    leaf, ca = x509.load_pem_x509_certificates(chain.encode())[:2]
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, ca, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    url = f"http://127.0.0.1:{workers_server.http_port}/{ALPHA}/ocsp"
    good = [await ocsp_status(fresh, url, request) for _ in range(TRIES)]
    assert set(good) == {ocsp.OCSPCertStatus.GOOD}

    der = leaf.public_bytes(serialization.Encoding.DER)
    reply = await client.post(
        client.directory["revokeCert"], {"certificate": jose.b64encode(der).decode()}
    )
    assert reply.status == 200, reply.body

    deadline = time.monotonic() + 10
    while await ocsp_status(fresh, url, request) != ocsp.OCSPCertStatus.REVOKED:
        assert time.monotonic() < deadline, "no worker answered revoked within 10 s"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the other workers heard of it through the supervisor by now
    after = [await ocsp_status(fresh, url, request) for _ in range(TRIES)]
    assert set(after) == {ocsp.OCSPCertStatus.REVOKED}


async def test_a_worker_that_dies_is_replaced_and_the_server_keeps_serving(
    workers_server: LiveServer, fresh: aiohttp.ClientSession
) -> None:
    assert workers_server.process is not None
    supervisor = workers_server.process.pid
    before = set(workers_server.processes()) - {supervisor}
    victim = min(before)

    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + 60
    now = set(process_tree(supervisor)) - {supervisor}
    while not (victim not in now and len(now) == WORKERS):
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        await asyncio.sleep(0.2)
        now = set(process_tree(supervisor)) - {supervisor}
    client = await client_at(workers_server, fresh, ALPHA)
    for _ in range(TRIES):
        assert (await client.new_account()).status == 201
        client.kid = None
        client.key = AcmeTestClient(fresh, client.directory_url, client.ssl_context).key


def test_sigterm_stops_the_supervisor_and_every_worker(
    tmp_path: Path,
    dns_server: LoopbackDnsServer,
    http01_responder: Http01Responder,
    tlsalpn_port: int,
) -> None:
    servers = running_server(
        tmp_path,
        dns_server.resolver_address,
        http01_responder.port,
        tlsalpn_port,
        {"ACME_MT_SERVER_WORKERS": "2"},
    )
    server = next(servers)
    assert server.process is not None
    members = server.processes()
    assert len(members) == 3

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0

    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in members[1:]):
        assert time.monotonic() < deadline, "a worker outlived its supervisor"
        time.sleep(0.1)
    servers.close()


def test_a_second_server_on_the_same_ports_refuses_to_start(
    workers_server: LiveServer, tmp_path: Path
) -> None:
    env = {**workers_server.env, "ACME_MT_SERVER_WORKERS": "2"}
    second = subprocess.run(
        [sys.executable, "-m", "acme_mt", "serve", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{workers_server.https_port}" in second.stderr
    assert len(workers_server.processes()) == 1 + WORKERS


async def test_a_tenant_enrolled_at_one_worker_reenrolls_at_every_worker(
    workers_server: LiveServer, fresh: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # A tenant made now, so no worker trusted its CA at start; one worker
    # issues, and the others learn to trust its CA from the issuance event.
    workers_server.create_tenant("workers-est", "require_eab = false\n")
    made = workers_server.cli_json("est", "credential", "create", "workers-est")
    auth = aiohttp.encode_basic_auth(made["username"], made["password"])
    body, key = make_csr(["device.workers.test"], common_name="device.workers.test")
    enroll_url = f"{workers_server.https_url}/.well-known/est/workers-est/simpleenroll"
    [current] = (await est_post(fresh, workers_server, enroll_url, body, auth=auth)).certificates()
    tls = client_context(workers_server, tmp_path, current, key)
    renew_url = f"{workers_server.https_url}/.well-known/est/workers-est/simplereenroll"
    await asyncio.sleep(0.5)  # the issuance event reaches the other workers

    renewed = [
        (await est_post(fresh, workers_server, renew_url, body, client_tls=tls)).certificates()[0]
        for _ in range(TRIES // 2)
    ]

    assert len({c.serial_number for c in renewed}) == TRIES // 2
    assert all(c.subject == current.subject for c in renewed)
