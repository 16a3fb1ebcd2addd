"""Fixtures shared by the integration and conformance tests: a live server on
loopback, a test DNS server that answers 127.0.0.1 for every name, and an
http-01 responder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from conformance.dns_server import LoopbackDnsServer
from tests.support.live import Http01Responder, LiveServer, free_port, running_server
from tests.support.postgres import own_cluster, postgres_cluster  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def dns_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dns-records")


@pytest.fixture(scope="session")
def dns_server(dns_records: Path) -> Iterator[LoopbackDnsServer]:
    server = LoopbackDnsServer(dns_records)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http01_responder() -> Iterator[Http01Responder]:
    responder = Http01Responder(free_port())
    responder.start()
    yield responder
    responder.stop()


@pytest.fixture(scope="session")
def tlsalpn_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def live_server(
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: LoopbackDnsServer,
    http01_responder: Http01Responder,
    tlsalpn_port: int,
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("acme-mt-data")
    yield from running_server(
        data_dir, dns_server.resolver_address, http01_responder.port, tlsalpn_port
    )


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
