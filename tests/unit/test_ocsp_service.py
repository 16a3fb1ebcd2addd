"""The OCSP service and handlers in process: responders start and stop with their
tenants, certificate events reach them, and the HTTP answers carry RFC 5019 headers."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from acme_mt.app import Services, open_services
from acme_mt.config import ServerSettings, Settings
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.lifecycle import onboard_tenant, set_tenant_status
from ocsp.cache import CachedResponse
from ocsp.handlers import OCSP_SERVICE, _raw_tail, ocsp_routes
from ocsp.responder import REFRESH_AFTER
from ocsp.service import REFRESH_LEASE, OcspService
from tests.unit.test_ocsp_responder import START, Clock, _hashes, issue, query_for, settle


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    opened = await open_services(Settings(server=ServerSettings(data_dir=str(tmp_path))))
    yield opened
    await opened.close()


async def add_tenant(services: Services, slug: str, **policy: Any) -> TenantContext:
    await onboard_tenant(
        services.settings,
        services.registry,
        services.stores,
        services.keystore,
        services.provider,
        slug,
        {"require_eab": False, **policy},
    )
    tenant = await services.tenants.resolve(slug)
    assert tenant is not None
    return tenant


@pytest.fixture
async def client(
    services: Services, aiohttp_client: Any
) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], OcspService]]:
    service = OcspService(services.tenants, services.registry)
    app = web.Application()
    app[OCSP_SERVICE] = service
    app.add_routes(ocsp_routes())
    yield await aiohttp_client(app), service
    await service.close()


def get_path(tenant: TenantContext, serial: int) -> str:
    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        *_hashes(tenant, hashes.SHA1()), serial, hashes.SHA1()
    )
    der = request.build().public_bytes(serialization.Encoding.DER)
    return f"/{tenant.slug}/ocsp/{base64.b64encode(der).decode()}"


@pytest.mark.parametrize(
    ("raw", "tail"),
    [
        ("/t1/ocsp/MEow+a/b=", "MEow+a/b="),
        ("/t1/ocsp//MEow%2Ba%2Fb%3D", "/MEow%2Ba%2Fb%3D"),
        ("/t1/ocsp/ME?x=1", "ME"),
        ("/t1/ocsp/", ""),
        ("/t1/ocsp", ""),
    ],
)
def test_raw_tail_is_the_path_after_ocsp_as_sent(raw: str, tail: str) -> None:
    assert _raw_tail(raw) == tail


async def test_start_presigns_every_tenant_with_ocsp_on(services: Services) -> None:
    default = await services.tenants.resolve("default")
    assert default is not None
    await issue(default)
    off = await add_tenant(services, "quiet", ocsp=False)
    await issue(off)
    service = OcspService(services.tenants, services.registry)
    await service.start()
    assert len(service.responder(default).cache) == 1
    assert service._responders.keys() == {default.id}
    await service.close()


async def test_events_reach_the_tenants_responder(services: Services) -> None:
    tenant = await add_tenant(services, "events")
    service = OcspService(services.tenants, services.registry)
    leaf = await issue(tenant)
    service.issued(tenant.id, format(leaf.serial_number, "x"))  # starts the responder
    responder = service._responders[tenant.id]
    await asyncio.gather(*service._warming.values())
    await settle(responder)  # the serial is pre-signed with those issued beside it
    assert len(responder.cache) == 1

    await tenant.store.revoke_certificate(format(leaf.serial_number, "x"), 1, START)
    service.revoked(tenant.id, format(leaf.serial_number, "x"))
    await settle(responder)
    cached = responder.cache.get(responder.presign_request(leaf.serial_number).cache_key)
    assert cached is not None
    status = ocsp.load_der_ocsp_response(cached.der).certificate_status
    assert status == ocsp.OCSPCertStatus.REVOKED
    await service.close()


async def test_tick_lets_go_of_a_suspended_tenant(services: Services) -> None:
    tenant = await add_tenant(services, "leaving")
    service = OcspService(services.tenants, services.registry)
    service.responder(tenant)
    await asyncio.gather(*service._warming.values())
    await service.tick()
    assert tenant.id in service._responders
    await set_tenant_status(services.registry, "leaving", "suspended")
    await services.tenants.refresh()
    await service.tick()
    assert tenant.id not in service._responders
    await service.close()


async def test_get_serves_the_presigned_response_with_rfc5019_headers(
    services: Services, client: tuple[TestClient[web.Request, web.Application], OcspService]
) -> None:
    http, service = client
    tenant = await add_tenant(services, "headers")
    leaf = await issue(tenant)
    path = get_path(tenant, leaf.serial_number)

    first = await http.get(path)
    await asyncio.gather(*service._warming.values())
    second = await http.get(path)
    assert first.status == second.status == 200
    assert second.headers["Content-Type"] == "application/ocsp-response"
    cache_control = second.headers["Cache-Control"]
    assert cache_control.endswith(", public, no-transform, must-revalidate")
    max_age = int(cache_control.removeprefix("max-age=").split(",")[0])
    assert timedelta(hours=23) < timedelta(seconds=max_age) <= timedelta(hours=24)
    body = await second.read()
    response = ocsp.load_der_ocsp_response(body)
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert second.headers["Last-Modified"] and second.headers["Expires"]

    etag = second.headers["ETag"]
    not_modified = await http.get(path, headers={"If-None-Match": f'W/"x", {etag}'})
    assert not_modified.status == 304
    assert not_modified.headers["ETag"] == etag
    assert await not_modified.read() == b""
    other = await http.get(path, headers={"If-None-Match": '"something-else"'})
    assert other.status == 200 and await other.read() == body
    # The 304 dropped Content-Type from its own headers, not from the shared set.
    assert other.headers["Content-Type"] == "application/ocsp-response"
    head = await http.head(path)
    assert head.status == 200 and head.headers["ETag"] == etag


async def test_unknown_and_disabled_tenants_get_the_same_unauthorized_bytes(
    services: Services, client: tuple[TestClient[web.Request, web.Application], OcspService]
) -> None:
    http, _ = client
    off = await add_tenant(services, "dark", ocsp=False)
    suspended = await add_tenant(services, "gone")
    await set_tenant_status(services.registry, "gone", "suspended")
    await services.tenants.refresh()
    answers = set()
    for slug in ("dark", "gone", "never-was", "Not_A_Slug"):
        path = get_path(off, 77).replace("/dark/", f"/{slug}/", 1)
        for reply in (await http.get(path), await http.post(f"/{slug}/ocsp", data=b"\x30\x00")):
            answers.add((reply.status, reply.headers["Content-Type"], await reply.read()))
    assert suspended.slug == "gone"
    assert len(answers) == 1
    status, _, body = answers.pop()
    assert status == 200
    assert ocsp.load_der_ocsp_response(body).response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


async def test_request_ids_go_with_answers_that_can_leave_a_trace(
    services: Services,
    client: tuple[TestClient[web.Request, web.Application], OcspService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="acme_mt.request")
    http, service = client
    tenant = await add_tenant(services, "traced")
    leaf = await issue(tenant)
    path = get_path(tenant, leaf.serial_number)
    await http.get(path)
    await asyncio.gather(*service._warming.values())

    fresh = await http.get(get_path(tenant, 4242), headers={"X-Request-Id": "rp-1"})
    assert fresh.status == 200 and fresh.headers["X-Request-Id"] == "rp-1"
    assert fresh.headers["Cache-Control"] == "no-store"
    hit = await http.get(path)
    assert hit.status == 200 and "X-Request-Id" not in hit.headers
    refused = await http.put(f"/{tenant.slug}/ocsp", data=b"\x30\x00")
    assert refused.status == 405 and refused.headers["Allow"] == "GET, HEAD, POST"
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "acme_mt.request"]
    assert [(e["method"], e["status"], e["id"]) for e in logged] == [
        ("PUT", 405, refused.headers["X-Request-Id"])
    ]


def presigned(service: OcspService, tenant: TenantContext, serial: int) -> bytes:
    responder = service._responders[tenant.id]
    cached = responder.cache.get(responder.presign_request(serial).cache_key)
    assert cached is not None
    return cached.der


async def test_replicas_serve_the_same_bytes_and_learn_revocations_from_the_store(
    services: Services,
) -> None:
    """Two services over one store stand for two replicas sharing PostgreSQL."""
    tenant = await add_tenant(services, "shared")
    first = OcspService(services.tenants, services.registry)
    second = OcspService(services.tenants, services.registry)
    leaf = await issue(tenant)
    serial = format(leaf.serial_number, "x")

    first.issued(tenant.id, serial)
    await asyncio.gather(*first._warming.values())
    second.responder(tenant)
    await asyncio.gather(*second._warming.values())
    assert presigned(second, tenant, leaf.serial_number) == presigned(
        first, tenant, leaf.serial_number
    )

    await tenant.store.revoke_certificate(serial, 1, START)
    first.revoked(tenant.id, serial)
    await settle(first._responders[tenant.id])
    revoked = presigned(first, tenant, leaf.serial_number)
    assert ocsp.load_der_ocsp_response(revoked).certificate_status == ocsp.OCSPCertStatus.REVOKED
    await second.sync()
    assert presigned(second, tenant, leaf.serial_number) == revoked
    await first.close()
    await second.close()


async def test_a_request_at_another_process_takes_the_issuers_response_of_a_fresh_serial(
    services: Services,
) -> None:
    """Asked about a serial issued elsewhere moments ago, a process waits for the
    issuing process's pre-signed response instead of signing a second one."""
    tenant = await add_tenant(services, "fresh")
    clock = Clock()  # the moment ``issue`` dates its certificates
    issuing = OcspService(services.tenants, services.registry, clock=clock)
    other = OcspService(services.tenants, services.registry, clock=clock)
    await asyncio.gather(*issuing.responder(tenant)._tasks, *issuing._warming.values())
    asking = other.responder(tenant)
    await asyncio.gather(*other._warming.values())
    leaf = await issue(tenant)

    issuing.issued(tenant.id, format(leaf.serial_number, "x"))
    answer = await asking.answer(*query_for(tenant, leaf.serial_number), nonce_allowed=False)
    await settle(issuing._responders[tenant.id])

    assert isinstance(answer, CachedResponse)
    assert answer.der == presigned(issuing, tenant, leaf.serial_number)
    assert presigned(other, tenant, leaf.serial_number) == answer.der
    await issuing.close()
    await other.close()


async def test_only_the_lease_holder_refreshes_and_the_other_takes_its_responses(
    services: Services,
) -> None:
    tenant = await add_tenant(services, "leased")
    leaf = await issue(tenant)
    clock = Clock()
    holder = OcspService(services.tenants, services.registry, clock=clock)
    other = OcspService(services.tenants, services.registry, clock=clock)
    holder.issued(tenant.id, format(leaf.serial_number, "x"))  # the process that issued it
    other.responder(tenant)
    for service in (holder, other):
        await asyncio.gather(*service._warming.values())
    await settle(holder._responders[tenant.id])
    signed = presigned(holder, tenant, leaf.serial_number)
    responder = other._responders[tenant.id]
    refreshes = []
    refresh = responder.refresh

    async def counted() -> int:
        refreshes.append(clock.now)
        return await refresh()

    responder.refresh = counted  # type: ignore[method-assign]

    clock.now = START + REFRESH_AFTER + timedelta(minutes=1)
    await holder.tick()
    refreshed = presigned(holder, tenant, leaf.serial_number)
    assert refreshed != signed
    assert ocsp.load_der_ocsp_response(refreshed).this_update_utc == clock.now

    await other.tick()  # the lease is the holder's: no refresh here
    assert refreshes == []
    assert presigned(other, tenant, leaf.serial_number) == refreshed

    # The holder goes quiet past its lease, and the responses come due again.
    clock.now += max(REFRESH_LEASE, REFRESH_AFTER) + timedelta(minutes=1)
    await other.tick()
    assert refreshes == [clock.now]
    again = presigned(other, tenant, leaf.serial_number)
    assert ocsp.load_der_ocsp_response(again).this_update_utc == clock.now
    await holder.close()
    await other.close()
