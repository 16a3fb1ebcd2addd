"""The directory and nonce resources (RFC 8555 §7.1.1, §7.2)."""

from __future__ import annotations

from aiohttp import web

from acme_mt.urls import AcmeUrls
from acme_mt.web.keys import SETTINGS, tenant_of
from acme_mt.web.render import json_response


async def directory(request: web.Request) -> web.Response:
    """The tenant's directory, with meta describing its policy."""
    tenant = tenant_of(request)
    settings = request.app[SETTINGS]
    urls = AcmeUrls(settings.server.https_url, tenant.slug)
    meta: dict[str, object] = {
        "externalAccountRequired": tenant.policy.require_eab,
        "caaIdentities": list(tenant.policy.caa_identities) or [_host(settings.server.https_url)],
    }
    meta["profiles"] = {
        p.name: p.description or f"{p.validity_days}-day certificates"
        for p in tenant.policy.all_profiles()
    }
    if settings.provider.website:
        meta["website"] = settings.provider.website
    body = {
        "newNonce": urls.new_nonce(),
        "newAccount": urls.new_account(),
        "newOrder": urls.new_order(),
        "newAuthz": urls.new_authz(),
        "revokeCert": urls.revoke_cert(),
        "keyChange": urls.key_change(),
        "renewalInfo": urls.renewal_info(),
        "meta": meta,
    }
    response = json_response(body)
    response.headers["Cache-Control"] = "public, max-age=0, no-cache"
    return response


def _host(url: str) -> str:
    host = url.split("://", 1)[-1].split("/", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def new_nonce(request: web.Request) -> web.Response:
    """HEAD answers 200 and GET 204; the middleware adds the nonce (RFC 8555 §7.2)."""
    status = 200 if request.method == "HEAD" else 204
    return web.Response(status=status, headers={"Cache-Control": "no-store"})
