"""Rendering of errors as RFC 7807 problem documents: the one place it happens.

Internal errors become a fixed sentence with the request id; their text, SQL or
a tenant's name never reach the client (RFC 8555 §6.7).
"""

from __future__ import annotations

import json

from aiohttp import web

from acme_mt.errors import ACME_ERROR_PREFIX, AcmeProblem

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_response(prob: AcmeProblem) -> web.Response:
    """An aiohttp response for a problem; Retry-After is set when the problem has one."""
    response = web.Response(
        status=prob.status,
        body=json.dumps(prob.to_json()).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    if prob.retry_after is not None:
        response.headers["Retry-After"] = str(prob.retry_after)
    return response


def not_found_response() -> web.Response:
    """The one answer for a missing resource and for a tenant the caller may not see."""
    body = {"type": ACME_ERROR_PREFIX + "malformed", "detail": "No such resource", "status": 404}
    return web.Response(
        status=404, body=json.dumps(body).encode(), content_type=PROBLEM_CONTENT_TYPE
    )


def internal_error_response(request_id: str) -> web.Response:
    """A 500 that says nothing about the cause, only how to find it in the logs."""
    prob = AcmeProblem("serverInternal", f"The server hit an internal error (request {request_id})")
    return problem_response(prob)


def unavailable_response(detail: str) -> web.Response:
    """A 503 for a tenant whose store or keys are failing; the client may retry."""
    prob = AcmeProblem("serverInternal", detail, status=503, retry_after=5)
    return problem_response(prob)
