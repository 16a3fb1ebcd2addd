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
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.x509.ocsp import OCSPResponseBuilder, OCSPResponseStatus

from acme_mt.errors import TenantUnavailable
from acme_mt.log import log_request_event, request_id_for, request_id_var, tenant_var
from ocsp.cache import OCSP_RESPONSE, CachedResponse
from ocsp.request import MAX_REQUEST_BYTES, OcspError, decode_get_path, parse_request
from ocsp.responder import TenantResponder
from ocsp.service import OcspService

if TYPE_CHECKING:
    from acme_mt.app import Services
    from acme_mt.tenancy.context import TenantContext

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
            not_modified = web.Response(status=304, headers=headers)
            del not_modified.headers["Content-Type"]
            return not_modified
    return web.Response(body=cached.der, headers=headers)


def _raw_tail(raw_path: str) -> str:
    """What follows ``/{slug}/ocsp/`` in the path as sent, still percent-encoded."""
    rest = raw_path.partition("?")[0].removeprefix("/").partition("/")[2]
    return rest[len("ocsp/") :] if rest.startswith("ocsp/") else ""


async def ocsp_endpoint(request: web.Request) -> web.StreamResponse:
    """RFC 6960 appendix A.1: GET with the request base64 and URL-encoded in the
    path, or POST with the DER request (at most 64 KiB) as the body.

    Both methods share one route, so the router matches one pattern, not two.
    A request whose exact bytes were answered from the cache before (the raw
    GET path, the POST body) is answered again without decoding or parsing,
    and without a request id: nothing on that path logs. Everything else runs
    in a request context of its own (see :func:`_answer_in_context`).
    """
    tenant_var.set("-")
    request_id_var.set("-")
    method = request.method
    as_sent: str | bytes
    if method == "GET" or method == "HEAD":
        as_sent = request.raw_path
    elif method == "POST":
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            return _logged(request, web.Response(status=413, text="Request Entity Too Large"))
        as_sent = await request.read()
    else:
        allow = {"Allow": "GET, HEAD, POST"}
        return _logged(request, web.Response(status=405, text="Method Not Allowed", headers=allow))

    service = request.app[OCSP_SERVICE]
    slug = request.match_info["slug"]
    tenant = service.tenants.built(slug)
    if tenant is None:
        try:
            tenant = await service.tenants.resolve(slug)
        except TenantUnavailable:
            return status_response(OCSPResponseStatus.TRY_LATER)
    if tenant is None or not tenant.policy.ocsp:
        return status_response(OCSPResponseStatus.UNAUTHORIZED)
    responder = service.responder(tenant)
    cached = responder.cache.for_request(as_sent)
    if cached is not None:
        response = cached_response(request, cached)
    else:
        response = await _answer_in_context(request, tenant, responder, as_sent)
    if service.log_requests:
        tenant_var.set(tenant.slug)
        return _logged(request, response)
    return response


async def _answer_in_context(
    request: web.Request, tenant: TenantContext, responder: TenantResponder, as_sent: str | bytes
) -> web.Response:
    """Decode, parse and answer a request not seen before, with its request id and tenant.

    Every failure is answered in OCSP terms (an unsigned status, HTTP 200),
    as OCSP clients expect; an unexpected one is logged with the request id.
    """
    request_id = request_id_for(request.headers.get("X-Request-Id"))
    request_id_var.set(request_id)
    tenant_var.set(tenant.slug)
    try:
        der = decode_get_path(_raw_tail(as_sent)) if isinstance(as_sent, str) else as_sent
        query = parse_request(der)
        answer = await responder.answer(query, as_sent, nonce_allowed=tenant.policy.ocsp_nonce)
    except OcspError as exc:
        logger.debug("OCSP request refused: %s", exc)
        response = status_response(exc.status)
    except Exception:
        logger.exception("OCSP answer failed")
        response = status_response(OCSPResponseStatus.INTERNAL_ERROR)
    else:
        if isinstance(answer, CachedResponse):
            response = cached_response(request, answer)
        else:
            response = web.Response(body=answer, content_type=OCSP_RESPONSE, headers=_NO_STORE)
    response.headers["X-Request-Id"] = request_id
    return response


def _logged(request: web.Request, response: web.Response) -> web.Response:
    """``response`` with its request's event logged: HTTP-level refusals (method,
    size) always, like failures on every listener, and every answer when the
    server logs all relying-party requests."""
    request_id = response.headers.get("X-Request-Id") or request_id_for(
        request.headers.get("X-Request-Id")
    )
    response.headers["X-Request-Id"] = request_id
    event = {"method": request.method, "path": request.path, "id": request_id}
    if tenant_var.get() != "-":
        event["tenant"] = tenant_var.get()
    log_request_event({**event, "status": response.status})
    return response


def ocsp_routes() -> list[web.RouteDef]:
    # ``slug``, not ``tenant``: the responder answers unknown tenants itself,
    # in OCSP terms, instead of the request context's 404.
    return [web.route("*", "/{slug}/ocsp{tail:(/.*)?}", ocsp_endpoint)]


def setup_ocsp(app: web.Application, services: Services) -> list[web.RouteDef]:
    """Set up the responder, its certificate-event listeners and signing schedule.

    Returns the routes to serve. The OCSP endpoint keeps its own request
    context (ids, tenant, errors in OCSP terms), so it needs no wrapper.
    """
    executor = ThreadPoolExecutor(max_workers=SIGNING_THREADS, thread_name_prefix="ocsp")
    service = OcspService(
        services.tenants,
        services.registry,
        executor,
        log_requests=services.settings.server.log_relying_party_requests,
    )
    # The worker that issued pre-signs and keeps the response in the store, where
    # the others find it: one signature per certificate is enough.
    services.events.on_issued(service.issued)
    services.events.on_revoked(service.revoked)
    app[OCSP_SERVICE] = service

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
    return ocsp_routes()
