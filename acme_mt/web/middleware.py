"""Request context installed once by ``acme_mt.app``: request id and event, tenant
resolution, error rendering and the headers every ACME response carries
(RFC 8555 §6.5 Replay-Nonce, §7.1 Link rel="index").

The ACME listener gets it as a middleware; the plain listener, which serves
relying parties, wraps each of its handlers in a lighter form of it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from acme_mt.errors import AcmeProblem, KeyStoreError, NotFound, TenantUnavailable
from acme_mt.log import log_request_event, request_id_for, request_id_var, tenant_var
from acme_mt.urls import AcmeUrls
from acme_mt.web.keys import EVENT_KEY, LOG_EVERY_REQUEST, SETTINGS, TENANT_KEY, TENANTS
from acme_mt.web.problems import (
    internal_error_response,
    not_found_response,
    problem_response,
    unavailable_response,
)

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_acme(request: web.Request) -> bool:
    return "/acme/" in request.path


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, resolve its tenant, render errors and log one event."""
    request_id = request_id_for(request.headers.get("X-Request-Id"))
    request_id_var.set(request_id)
    tenant_var.set("-")
    started = time.perf_counter()
    event: dict[str, object] = {"method": request.method, "path": request.path, "id": request_id}
    request[EVENT_KEY] = event
    try:
        response = await _resolve_and_handle(request, handler)
    except Exception as exc:
        response = _error_response(request, exc, event, request_id)
    try:
        await _add_acme_headers(request, response)
    except Exception as exc:
        # A nonce needs the store once, for its key: without it, the error alone.
        response = _error_response(request, exc, event, request_id)
    response.headers["X-Request-Id"] = request_id
    if request.app.get(LOG_EVERY_REQUEST, True) or response.status >= 400:
        _log_event(event, response, started)
    return response


def relying_party_routes(
    routes: Iterable[web.RouteDef], *, log_every_request: bool
) -> list[web.RouteDef]:
    """The plain listener's routes, each handler run in :func:`relying_party_context`.

    Relying parties fetch OCSP answers, CRLs and CA certificates by the
    thousand, mostly from memory. aiohttp's middleware chain alone costs a
    sixth of such an answer, so the plain listener wraps its few handlers
    once, here, instead of installing a middleware.
    """
    wrapped = []
    for route in routes:
        handler = relying_party_context(
            route.handler,
            resolve_tenant="{tenant" in route.path,
            log_every_request=log_every_request,
        )
        wrapped.append(web.RouteDef(route.method, route.path, handler, route.kwargs))
    return wrapped


def relying_party_context(
    handler: Handler, *, resolve_tenant: bool, log_every_request: bool
) -> Handler:
    """``handler`` with the same ids, tenants and errors as ACME requests, at less cost.

    A success builds no event and touches no ACME header, and is logged only
    with ``log_every_request``; failures are logged exactly as on the ACME
    listener. Routes whose handlers find their tenant themselves (OCSP and
    CRLs answer unknown tenants in their own terms) skip the resolution step.
    """
    inner = functools.partial(_resolve_and_handle, handler=handler) if resolve_tenant else handler

    @functools.wraps(handler)
    async def in_context(request: web.Request) -> web.StreamResponse:
        request_id = request_id_for(request.headers.get("X-Request-Id"))
        request_id_var.set(request_id)
        tenant_var.set("-")
        started = time.perf_counter()
        try:
            response = await inner(request)
            event: dict[str, object] | None = None
        except Exception as exc:
            event = {}
            response = _error_response(request, exc, event, request_id)
        response.headers["X-Request-Id"] = request_id
        if event is not None or log_every_request or response.status >= 400:
            about = {"method": request.method, "path": request.path, "id": request_id}
            _log_event({**about, **(event or {})}, response, started)
        return response

    return in_context


def _error_response(
    request: web.Request, exc: Exception, event: dict[str, object], request_id: str
) -> web.StreamResponse:
    """The answer for whatever a handler raised, noting the problem in the event."""
    if isinstance(exc, AcmeProblem):
        event["problem"] = exc.type
        return problem_response(exc)
    if isinstance(exc, NotFound):
        if _is_acme(request):
            return not_found_response()
        return web.Response(status=404, text="Not Found")
    if isinstance(exc, TenantUnavailable):
        event["problem"] = "unavailable"
        return unavailable_response(exc.detail)
    if isinstance(exc, KeyStoreError):
        # A failing token or key file stops this tenant only (503), never the server.
        logger.exception("key store failure")
        event["problem"] = "unavailable"
        return unavailable_response("The tenant's keys are temporarily unavailable")
    if isinstance(exc, web.HTTPException):
        return _render_http_exception(request, exc)
    logger.exception("unhandled error")
    event["problem"] = "serverInternal"
    return internal_error_response(request_id)


def _log_event(event: dict[str, object], response: web.StreamResponse, started: float) -> None:
    tenant = tenant_var.get()
    if tenant != "-":
        event["tenant"] = tenant
    event["status"] = response.status
    event["ms"] = round((time.perf_counter() - started) * 1000, 2)
    log_request_event(event)


async def _resolve_and_handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    slug = request.match_info.get("tenant")
    if slug is not None:
        tenant = await request.app[TENANTS].resolve(slug)
        if tenant is None:
            raise NotFound()
        request[TENANT_KEY] = tenant
        tenant_var.set(tenant.slug)
    return await handler(request)


def _render_http_exception(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    """aiohttp's own errors (no route, wrong method, body too large) as our answers."""
    if exc.status == 404:
        return (
            not_found_response()
            if _is_acme(request)
            else web.Response(status=404, text="Not Found")
        )
    if not _is_acme(request):
        return exc
    if exc.status == 413:
        return problem_response(
            AcmeProblem("malformed", "The request body is too large", status=413)
        )
    if exc.status == 405:
        response = problem_response(AcmeProblem("malformed", "Method not allowed", status=405))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    if 400 <= exc.status < 500:
        return problem_response(
            AcmeProblem("malformed", exc.reason or "Bad request", status=exc.status)
        )
    return exc


async def _add_acme_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every ACME response of a known tenant gets a fresh nonce and the index link."""
    tenant = request.get(TENANT_KEY)
    if tenant is None or not _is_acme(request):
        return
    response.headers["Replay-Nonce"] = await tenant.nonces.issue()
    urls = AcmeUrls(request.app[SETTINGS].server.https_url, tenant.slug)
    response.headers.add("Link", f'<{urls.directory()}>;rel="index"')
    response.headers.setdefault("Cache-Control", "no-store")
