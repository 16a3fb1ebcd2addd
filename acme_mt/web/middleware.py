"""Middlewares installed once by ``acme_mt.app``: request id and event, tenant
resolution, error rendering and the headers every ACME response carries
(RFC 8555 §6.5 Replay-Nonce, §7.1 Link rel="index").
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from acme_mt.errors import AcmeProblem, KeyStoreError, NotFound, TenantUnavailable
from acme_mt.log import log_request_event, request_id_var, tenant_var
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
    request_id = _request_id(request.headers.get("X-Request-Id", ""))
    request_id_var.set(request_id)
    tenant_var.set("-")
    started = time.perf_counter()
    event: dict[str, object] = {"method": request.method, "path": request.path, "id": request_id}
    request[EVENT_KEY] = event
    try:
        response = await _resolve_and_handle(request, handler)
    except AcmeProblem as prob:
        event["problem"] = prob.type
        response = problem_response(prob)
    except NotFound:
        response = (
            not_found_response()
            if _is_acme(request)
            else web.Response(status=404, text="Not Found")
        )
    except TenantUnavailable as exc:
        event["problem"] = "unavailable"
        response = unavailable_response(exc.detail)
    except KeyStoreError:
        # A failing token or key file stops this tenant only (503), never the server.
        logger.exception("key store failure")
        event["problem"] = "unavailable"
        response = unavailable_response("The tenant's keys are temporarily unavailable")
    except web.HTTPException as exc:
        response = _render_http_exception(request, exc)
    except Exception:
        logger.exception("unhandled error")
        event["problem"] = "serverInternal"
        response = internal_error_response(request_id)
    await _add_acme_headers(request, response)
    response.headers["X-Request-Id"] = request_id
    event["status"] = response.status
    event["ms"] = round((time.perf_counter() - started) * 1000, 2)
    if request.app.get(LOG_EVERY_REQUEST, True) or response.status >= 400:
        log_request_event(event)
    return response


_PROCESS_PREFIX = secrets.token_hex(4)
_SEQUENCE = itertools.count(1)
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _request_id(offered: str) -> str:
    """The caller's request id when it is safe to log, else a process-unique one."""
    if offered and _SAFE_ID.fullmatch(offered):
        return offered
    return f"{_PROCESS_PREFIX}{next(_SEQUENCE):x}"


async def _resolve_and_handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    slug = request.match_info.get("tenant")
    if slug is not None:
        tenant = await request.app[TENANTS].resolve(slug)
        if tenant is None:
            raise NotFound()
        request[TENANT_KEY] = tenant
        tenant_var.set(tenant.slug)
        request[EVENT_KEY]["tenant"] = tenant.slug
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
