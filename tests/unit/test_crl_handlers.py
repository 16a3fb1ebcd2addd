"""CRL distribution over HTTP: content, caching headers, 304s and uniform 404s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography import x509

from acme_mt.issuance import Issuer
from crl.handlers import ROOT_CRL, TENANT_CRLS, TENANT_RESOLVER, crl_routes
from crl.publisher import TenantCrlPublisher
from crl.root import RootCrlPublisher
from tests.unit.test_crl_issuance import make_ca
from tests.unit.test_crl_publisher import FakeRegistry, FakeStore, FakeTenants, context

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> AsyncIterator[Client]:
    key, certificate = make_ca("Tenant CA")
    store = FakeStore()
    store.issue("abc", 1, revoked_ago=timedelta(hours=1))
    tenants = FakeTenants()
    issuer = Issuer("acme", certificate, key, certificate, "http://localhost:8080")
    tenants.contexts["acme"] = context(issuer, store, shards=2)
    root_key, root = make_ca("Root")
    publisher = TenantCrlPublisher(tenants)
    app = web.Application()
    app[TENANT_RESOLVER] = tenants
    app[TENANT_CRLS] = publisher
    app[ROOT_CRL] = RootCrlPublisher(cast(Any, FakeRegistry([])), root, root_key)
    app.add_routes(crl_routes())
    publisher.start()
    yield await aiohttp_client(app)
    await publisher.close()


async def test_shard_crl_is_der_with_caching_headers(client: Client) -> None:
    response = await client.get("/acme/crl/1.crl")

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(await response.read())
    assert [entry.serial_number for entry in crl] == [0xABC]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert response.headers["ETag"] == f'"{number:x}"'
    assert response.headers["Cache-Control"] == (
        "public, max-age=900, no-transform, must-revalidate"
    )
    assert parsedate_to_datetime(response.headers["Last-Modified"]) == crl.last_update_utc


async def test_delta_crl_has_shorter_max_age(client: Client) -> None:
    response = await client.get("/acme/crl/0-delta.crl")

    assert response.status == 200
    crl = x509.load_der_x509_crl(await response.read())
    crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert response.headers["Cache-Control"] == (
        "public, max-age=300, no-transform, must-revalidate"
    )


@pytest.mark.parametrize("form", ["{}", "W/{}", '"other", {}', "*"])
async def test_matching_if_none_match_is_304(client: Client, form: str) -> None:
    first = await client.get("/acme/crl/0.crl")
    etag = first.headers["ETag"]

    again = await client.get("/acme/crl/0.crl", headers={"If-None-Match": form.format(etag)})

    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert await again.read() == b""


async def test_other_etag_gets_the_crl(client: Client) -> None:
    response = await client.get("/acme/crl/0.crl", headers={"If-None-Match": '"1234"'})

    assert response.status == 200
    x509.load_der_x509_crl(await response.read())


async def test_if_modified_since_this_update_is_304_and_before_is_200(client: Client) -> None:
    first = await client.get("/acme/crl/0.crl")
    this_update = parsedate_to_datetime(first.headers["Last-Modified"])
    earlier = format_datetime(this_update.replace(year=this_update.year - 1), usegmt=True)

    last_modified = first.headers["Last-Modified"]
    same = await client.get("/acme/crl/0.crl", headers={"If-Modified-Since": last_modified})
    older = await client.get("/acme/crl/0.crl", headers={"If-Modified-Since": earlier})

    assert (same.status, older.status) == (304, 200)


async def test_head_has_headers_and_no_body(client: Client) -> None:
    response = await client.head("/acme/crl/0.crl")

    assert response.status == 200
    assert response.headers["Content-Type"] == "application/pkix-crl"
    assert await response.read() == b""


async def test_root_crl_is_served(client: Client) -> None:
    response = await client.get("/root.crl")

    assert response.status == 200
    crl = x509.load_der_x509_crl(await response.read())
    assert crl.issuer.rfc4514_string() == "CN=Root"


@pytest.mark.parametrize(
    "path",
    [
        "/nobody/crl/0.crl",
        "/nobody/crl/0-delta.crl",
        "/acme/crl/2.crl",
        "/acme/crl/2-delta.crl",
        "/acme/crl/01.crl",
        "/acme/crl/-1.crl",
        "/acme/crl/x.crl",
        "/acme/crl/0.crl.gz",
        "/acme/crl/0",
        "/acme/crl/99999.crl",
    ],
)
async def test_missing_crls_answer_alike(client: Client, path: str) -> None:
    response = await client.get(path)

    answer = (response.status, response.headers["Content-Type"], await response.text())
    assert answer == (404, "text/plain; charset=utf-8", "Not Found")
