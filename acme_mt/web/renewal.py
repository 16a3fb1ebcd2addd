"""The renewalInfo resource (RFC 9773 §4): unauthenticated GET of a certificate's window."""

from __future__ import annotations

from aiohttp import web

from acme_mt.authority.renewal import find_certificate, suggested_window
from acme_mt.models import rfc3339
from acme_mt.web.keys import event_of, tenant_of
from acme_mt.web.render import json_response


async def renewal_info(request: web.Request) -> web.Response:
    """The suggested renewal window of a certificate of this tenant."""
    tenant = tenant_of(request)
    record = await find_certificate(tenant, request.match_info["cert_id"])
    event_of(request)["serial"] = record.serial
    window = suggested_window(tenant, record)
    body = {"suggestedWindow": {"start": rfc3339(window.start), "end": rfc3339(window.end)}}
    return json_response(body, retry_after=tenant.policy.renewal_retry_after_seconds)
