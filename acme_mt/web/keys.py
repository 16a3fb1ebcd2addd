"""Typed application state shared by the ACME handlers (aiohttp ``AppKey``s)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from acme_mt.authority import RegistrationAuthority
from acme_mt.config import Settings
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.directory import TenantDirectory

SETTINGS = web.AppKey("settings", Settings)
TENANTS = web.AppKey("tenants", TenantDirectory)
AUTHORITY = web.AppKey("authority", RegistrationAuthority)
#: Whether every request writes its event, or only failed ones (cache hits of
#: OCSP and CRLs on the plain listener are counted, not logged one by one).
LOG_EVERY_REQUEST = web.AppKey("log_every_request", bool)

#: Request keys: the resolved tenant and the structured event of the request.
TENANT_KEY = "acme_mt.tenant"
EVENT_KEY = "acme_mt.event"


def tenant_of(request: web.Request) -> TenantContext:
    """The tenant the middleware resolved for this request."""
    tenant: TenantContext = request[TENANT_KEY]
    return tenant


def event_of(request: web.Request) -> dict[str, Any]:
    """The request's structured event, for handlers to add what they learn."""
    event: dict[str, Any] = request[EVENT_KEY]
    return event
