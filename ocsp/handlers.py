"""OCSP over plain HTTP (RFC 6960 appendix A.1; RFC 5019 §5, §6).

``POST /{tenant}/ocsp`` takes the DER request as its body and
``GET /{tenant}/ocsp/{base64 request}`` in its path; both answer
``application/ocsp-response``. Pre-signed answers carry RFC 5019 caching
headers (Cache-Control max-age up to nextUpdate, ETag, Last-Modified, Expires)
and a matching If-None-Match gets 304. Freshly signed answers (a nonce, an
unknown serial, several CertIDs) and unsuccessful statuses are ``no-store``.

Unsuccessful statuses are unsigned (§4.2.1) and go out with HTTP 200, the way
OCSP clients expect them. An unknown tenant, a suspended one and one with OCSP
off all get the very same ``unauthorized`` bytes, so slugs cannot be probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.x509.ocsp import OCSPResponseBuilder, OCSPResponseStatus

from acme_mt.errors import TenantUnavailable
from acme_mt.log import tenant_var
from ocsp.cache import OCSP_RESPONSE, CachedResponse
from ocsp.request import MAX_REQUEST_BYTES, OcspError, decode_get_path, parse_request
from ocsp.service import OcspService

if TYPE_CHECKING:
    from acme_mt.app import Services

logger = logging.getLogger(__name__)

#: Threads that sign responses; a PKCS#11 key store serialises them anyway.
SIGNING_THREADS = 2

OCSP_SERVICE = web.AppKey("ocsp_service", OcspService)

_NO_STORE = {"Cache-Control": "no-store"}


def _unsuccessful(status: OCSPResponseStatus) -> bytes:
    response = OCSPResponseBuilder.build_unsuccessful(status)
    return response.public_bytes(serialization.Encoding.DER)


_STATUS_BYTES = {
    status: _unsuccessful(status)
    for status in (
        OCSPResponseStatus.MALFORMED_REQUEST,
        OCSPResponseStatus.INTERNAL_ERROR,
        OCSPResponseStatus.TRY_LATER,
        OCSPResponseStatus.UNAUTHORIZED,
    )
}


def status_response(status: OCSPResponseStatus) -> web.Response:
    """An unsigned, unsuccessful OCSPResponse (§4.2.1), never cached."""
    return web.Response(body=_STATUS_BYTES[status], content_type=OCSP_RESPONSE, headers=_NO_STORE)


def cached_response(request: web.Request, cached: CachedResponse) -> web.Response:
    """A pre-signed response with its caching headers, or 304 for the client's copy."""
    headers = cached.headers(time.time())
    if "If-None-Match" in request.headers:
        tags = request.if_none_match or ()
        if any(tag.value in (cached.etag, "*") for tag in tags):
            validators = {k: v for k, v in headers.items() if k != "Content-Type"}
            return web.Response(status=304, headers=validators)
    return web.Response(body=cached.der, headers=headers)


def _raw_tail(raw_path: str) -> str:
    """What follows ``/{slug}/ocsp/`` in the path as sent, still percent-encoded."""
    rest = raw_path.partition("?")[0].removeprefix("/").partition("/")[2]
    return rest[len("ocsp/") :] if rest.startswith("ocsp/") else ""


async def ocsp_get(request: web.Request) -> web.Response:
    """RFC 6960 appendix A.1: the request, base64 and URL-encoded, in the path."""
    tail = _raw_tail(request.raw_path)
    return await _respond(request, tail, lambda: decode_get_path(tail))


async def ocsp_post(request: web.Request) -> web.Response:
    """RFC 6960 appendix A.1: the DER request as the body (at most 64 KiB)."""
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        return web.Response(status=413, text="Request Entity Too Large")
    body = await request.read()
    return await _respond(request, body, lambda: body)


async def _respond(
    request: web.Request, as_sent: str | bytes, read: Callable[[], bytes]
) -> web.Response:
    """Answer the request that arrived as ``as_sent`` (GET path or POST body).

    A request whose exact bytes were answered from the cache before is
    answered again without decoding or parsing.
    """
    service = request.app[OCSP_SERVICE]
    try:
        tenant = await service.tenants.resolve(request.match_info["slug"])
    except TenantUnavailable:
        return status_response(OCSPResponseStatus.TRY_LATER)
    if tenant is None or not tenant.policy.ocsp:
        return status_response(OCSPResponseStatus.UNAUTHORIZED)
    tenant_var.set(tenant.slug)
    responder = service.responder(tenant)

    try:
        cached = responder.cache.for_request(as_sent)
        if cached is not None:
            return cached_response(request, cached)
        query = parse_request(read())
        answer = await responder.answer(query, as_sent, nonce_allowed=tenant.policy.ocsp_nonce)
    except OcspError as exc:
        logger.debug("OCSP request refused: %s", exc)
        return status_response(exc.status)
    except Exception:
        logger.exception("OCSP answer failed")
        return status_response(OCSPResponseStatus.INTERNAL_ERROR)
    if isinstance(answer, CachedResponse):
        return cached_response(request, answer)
    return web.Response(body=answer, content_type=OCSP_RESPONSE, headers=_NO_STORE)


async def ocsp_endpoint(request: web.Request) -> web.Response:
    """Both methods on one route, so the router matches one pattern, not two."""
    if request.method in ("GET", "HEAD"):
        return await ocsp_get(request)
    if request.method == "POST":
        return await ocsp_post(request)
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST"])


def ocsp_routes() -> list[web.RouteDef]:
    # ``slug``, not ``tenant``: the responder answers unknown tenants itself,
    # in OCSP terms, instead of the middleware's 404.
    return [web.route("*", "/{slug}/ocsp{tail:(/.*)?}", ocsp_endpoint)]


def setup_ocsp(app: web.Application, services: Services) -> None:
    """Register the OCSP routes, the certificate-event listeners and the signing schedule."""
    executor = ThreadPoolExecutor(max_workers=SIGNING_THREADS, thread_name_prefix="ocsp")
    service = OcspService(services.tenants, services.registry, executor)
    services.events.on_issued(service.issued)
    services.events.on_revoked(service.revoked)
    app[OCSP_SERVICE] = service
    app.add_routes(ocsp_routes())

    async def responding(_app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(service.start()),
            asyncio.create_task(service.run_schedule()),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await service.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(responding)
