"""CRL distribution over plain HTTP (RFC 5280 §4.2.1.13, §5; RFC 9110 caching).

``GET /{tenant}/crl/{shard}.crl`` serves a shard's full CRL,
``GET /{tenant}/crl/{shard}-delta.crl`` its delta and ``GET /root.crl`` the
root's CRL, all DER as ``application/pkix-crl`` from memory. Responses carry
Cache-Control with a max-age up to nextUpdate (bounded), ETag and
Last-Modified, and answer 304 to a matching If-None-Match or, without one, to
an If-Modified-Since at or after thisUpdate.

An unknown tenant, a tenant that is not served, a shard the tenant does not
have and a malformed name all get the same plain 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING

from aiohttp import web

from acme_mt.log import tenant_var
from acme_mt.models import utcnow
from acme_mt.tenancy.context import SLUG_PATTERN
from crl.published import (
    MAX_AGE_DELTA,
    MAX_AGE_FULL,
    CrlNumbers,
    CrlUnavailable,
    PublishedCrl,
    TenantResolver,
    parse_crl_name,
)
from crl.publisher import TenantCrlPublisher
from crl.root import RootCrlPublisher

if TYPE_CHECKING:
    from acme_mt.app import Services

logger = logging.getLogger(__name__)

PKIX_CRL = "application/pkix-crl"
TICK_SECONDS = 5.0
#: Threads that build and sign CRLs; a tenant with a huge CRL occupies one at most.
SIGNING_THREADS = 2

TENANT_CRLS = web.AppKey("tenant_crls", TenantCrlPublisher)
ROOT_CRL = web.AppKey("root_crl", RootCrlPublisher)
TENANT_RESOLVER = web.AppKey("crl_tenant_resolver", TenantResolver)


def _not_found() -> web.Response:
    """The one answer for every CRL that is not there, whoever's it would be."""
    return web.Response(status=404, text="Not Found")


def _unavailable() -> web.Response:
    return web.Response(status=503, text="CRL not available yet", headers={"Retry-After": "5"})


def _http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def crl_response(request: web.Request, crl: PublishedCrl, max_age: int) -> web.Response:
    """The CRL with caching headers, or 304 when the client's copy is current."""
    now = utcnow()
    seconds = int(max(0.0, min((crl.next_update - now).total_seconds(), max_age)))
    headers = {
        "Cache-Control": f"public, max-age={seconds}, no-transform, must-revalidate",
        "ETag": f'"{crl.etag}"',
        "Last-Modified": _http_date(crl.this_update),
        "Expires": _http_date(now + timedelta(seconds=seconds)),
    }
    if _not_modified(request, crl):
        return web.Response(status=304, headers=headers)
    return web.Response(body=crl.der, content_type=PKIX_CRL, headers=headers)


def _not_modified(request: web.Request, crl: PublishedCrl) -> bool:
    """RFC 9110 §13.1.2 then §13.1.3: If-None-Match wins over If-Modified-Since."""
    tags = request.if_none_match
    if tags is not None:
        return any(tag.value in (crl.etag, "*") for tag in tags)
    since = request.if_modified_since
    return since is not None and crl.this_update <= since


async def tenant_crl(request: web.Request) -> web.Response:
    """A tenant's shard CRL or its delta."""
    parsed = parse_crl_name(request.match_info["name"])
    if parsed is None:
        return _not_found()
    shard, delta = parsed
    tenant = await request.app[TENANT_RESOLVER].resolve(request.match_info["slug"])
    if tenant is None or shard >= tenant.policy.crl_shards:
        return _not_found()
    tenant_var.set(tenant.slug)
    try:
        crl = await request.app[TENANT_CRLS].current(tenant, shard, delta)
    except CrlUnavailable:
        return _unavailable()
    return crl_response(request, crl, MAX_AGE_DELTA if delta else MAX_AGE_FULL)


async def root_crl(request: web.Request) -> web.Response:
    """The provider root's CRL."""
    try:
        crl = await request.app[ROOT_CRL].current()
    except CrlUnavailable:
        return _unavailable()
    return crl_response(request, crl, MAX_AGE_FULL)


def crl_routes() -> list[web.RouteDef]:
    # The slug is matched under its own name so that the CRL handler, not the
    # tenant middleware, answers for tenants it cannot see.
    return [
        web.get("/root.crl", root_crl),
        web.get("/{slug:" + SLUG_PATTERN + "}/crl/{name}", tenant_crl),
    ]


def setup_crl(app: web.Application, services: Services) -> list[web.RouteDef]:
    """Set up the publishers that sign CRLs; returns the routes that serve them.

    Limitation: a suspended or offboarded tenant's CRLs stop being served with
    the tenant, though RFC 5280 relying parties still need them until its
    certificates expire; a final CRL kept by offboarding would end that.
    """
    executor = ThreadPoolExecutor(max_workers=SIGNING_THREADS, thread_name_prefix="crl")
    numbers = CrlNumbers()
    tenants = TenantCrlPublisher(services.tenants, executor=executor, numbers=numbers)
    root = RootCrlPublisher(
        services.registry,
        services.provider.root_certificate,
        services.provider.root_key,
        executor=executor,
        numbers=numbers,
    )
    services.events.on_revoked(tenants.revoked)
    app[TENANT_RESOLVER] = services.tenants
    app[TENANT_CRLS] = tenants
    app[ROOT_CRL] = root

    async def publishing(_app: web.Application) -> AsyncIterator[None]:
        tenants.start()
        schedule = asyncio.create_task(_run_schedule(tenants, root))
        yield
        schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await schedule
        await tenants.close()
        await root.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(publishing)
    return crl_routes()


async def _run_schedule(tenants: TenantCrlPublisher, root: RootCrlPublisher) -> None:
    """Sign the root CRL now, then re-sign whatever is due every few seconds."""
    while True:
        for publisher in (root, tenants):
            try:
                await publisher.tick()
            except Exception:
                logger.exception("CRL schedule failed")
        await asyncio.sleep(TICK_SECONDS)
