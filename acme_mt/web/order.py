"""Order resources (RFC 8555 §7.4): newOrder, order, finalize."""

from __future__ import annotations

from aiohttp import web

from acme_mt.errors import AcmeProblem, NotFound
from acme_mt.models import Account, Order, OrderStatus
from acme_mt.urls import AcmeUrls
from acme_mt.web.auth import authenticate
from acme_mt.web.keys import AUTHORITY, SETTINGS, event_of, tenant_of
from acme_mt.web.render import json_response, order_json

#: FIELD-NOTES: clients pace themselves on Retry-After; 1 s, never 0.
RETRY_AFTER_SECONDS = 1


def _urls(request: web.Request) -> AcmeUrls:
    return AcmeUrls(request.app[SETTINGS].server.https_url, tenant_of(request).slug)


def _order_response(request: web.Request, order: Order, *, status: int = 200) -> web.Response:
    urls = _urls(request)
    retry = (
        RETRY_AFTER_SECONDS
        if order.status in (OrderStatus.PENDING, OrderStatus.PROCESSING)
        else None
    )
    return json_response(
        order_json(urls, order), status=status, location=urls.order(order.id), retry_after=retry
    )


async def _owned_order(request: web.Request, account: Account) -> Order:
    """The order of the URL if it belongs to this account of this tenant."""
    order = await tenant_of(request).store.get_order(request.match_info["order_id"])
    if order is None:
        raise NotFound()
    if order.account_id != account.id:
        raise AcmeProblem("unauthorized", "The order belongs to another account")
    return order


async def new_order(request: web.Request) -> web.Response:
    """Create an order for the identifiers of the payload (RFC 8555 §7.4)."""
    signed = await authenticate(request)
    account = signed.require_account()
    payload = signed.payload()
    order = await request.app[AUTHORITY].orders.new_order(tenant_of(request), account, payload)
    event_of(request).update(order=order.id, identifiers=[i.value for i in order.identifiers])
    return _order_response(request, order, status=201)


async def order(request: web.Request) -> web.Response:
    """POST-as-GET an order, its status brought up to date."""
    signed = await authenticate(request)
    account = signed.require_account()
    current = await _owned_order(request, account)
    current = await request.app[AUTHORITY].orders.refresh(tenant_of(request), current)
    return _order_response(request, current)


async def finalize(request: web.Request) -> web.Response:
    """Submit the CSR of a ready order and issue (RFC 8555 §7.4)."""
    signed = await authenticate(request)
    account = signed.require_account()
    current = await _owned_order(request, account)
    event_of(request)["order"] = current.id
    finished = await request.app[AUTHORITY].orders.finalize(
        tenant_of(request), account, current, signed.payload()
    )
    event_of(request)["serial"] = finished.certificate_serial
    return _order_response(request, finished)
