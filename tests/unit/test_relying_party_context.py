"""The plain listener's request context: ids, tenants and errors without a middleware."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp import web

from acme_mt.errors import NotFound, TenantUnavailable
from acme_mt.log import request_id_var, tenant_var
from acme_mt.web.middleware import relying_party_routes


async def seen(_request: web.Request) -> web.Response:
    return web.Response(text=f"{request_id_var.get()} {tenant_var.get()}")


async def missing(_request: web.Request) -> web.Response:
    raise NotFound()


async def failing(_request: web.Request) -> web.Response:
    raise RuntimeError("secret detail")


async def unavailable(_request: web.Request) -> web.Response:
    raise TenantUnavailable("The tenant is temporarily unavailable")


def make_app(*, log_every_request: bool) -> web.Application:
    routes = [
        web.get("/seen", seen),
        web.get("/missing", missing),
        web.get("/failing", failing),
        web.get("/unavailable", unavailable),
    ]
    app = web.Application()
    app.add_routes(relying_party_routes(routes, log_every_request=log_every_request))
    return app


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "acme_mt.request"]


async def test_success_gets_an_id_and_no_log_line(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="acme_mt.request")
    client = await aiohttp_client(make_app(log_every_request=False))
    first = await client.get("/seen")
    second = await client.get("/seen")
    ids = {first.headers["X-Request-Id"], second.headers["X-Request-Id"]}
    assert len(ids) == 2
    assert await first.text() == f"{first.headers['X-Request-Id']} -"
    offered = await client.get("/seen", headers={"X-Request-Id": "relying-party.42"})
    assert offered.headers["X-Request-Id"] == "relying-party.42"
    unsafe = await client.get("/seen", headers={"X-Request-Id": "a b\tc"})
    assert unsafe.headers["X-Request-Id"] != "a b\tc"
    assert events(caplog) == []


async def test_every_request_is_logged_when_asked(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="acme_mt.request")
    client = await aiohttp_client(make_app(log_every_request=True))
    reply = await client.get("/seen")
    [event] = events(caplog)
    assert event["id"] == reply.headers["X-Request-Id"]
    assert (event["method"], event["path"], event["status"]) == ("GET", "/seen", 200)


async def test_failures_are_rendered_and_logged_without_their_detail(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await aiohttp_client(make_app(log_every_request=False))
    missing_reply = await client.get("/missing")
    assert missing_reply.status == 404 and await missing_reply.text() == "Not Found"
    failed = await client.get("/failing")
    assert failed.status == 500
    assert "secret detail" not in await failed.text()
    assert failed.headers["X-Request-Id"] in await failed.text()
    busy = await client.get("/unavailable")
    assert busy.status == 503 and busy.headers["Retry-After"] == "5"
    logged = {event["path"]: event for event in events(caplog)}
    assert logged["/missing"]["status"] == 404
    assert logged["/failing"]["problem"] == "serverInternal"
    assert logged["/failing"]["id"] == failed.headers["X-Request-Id"]
    assert logged["/unavailable"]["problem"] == "unavailable"
    traced = [r for r in caplog.records if r.name == "acme_mt.web.middleware"]
    assert traced and traced[0].exc_info is not None
