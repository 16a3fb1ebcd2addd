"""Account resources (RFC 8555 §7.3): newAccount, account, orders list, keyChange."""

from __future__ import annotations

from aiohttp import web

from acme_mt.authority import KeyInUse
from acme_mt.errors import AcmeProblem, NotFound
from acme_mt.urls import AcmeUrls
from acme_mt.web.auth import authenticate, request_url
from acme_mt.web.keys import AUTHORITY, SETTINGS, event_of, tenant_of
from acme_mt.web.problems import problem_response
from acme_mt.web.render import account_json, json_response

ORDERS_PAGE_SIZE = 100


def _urls(request: web.Request) -> AcmeUrls:
    return AcmeUrls(request.app[SETTINGS].server.https_url, tenant_of(request).slug)


async def new_account(request: web.Request) -> web.Response:
    """Create an account, or return the existing one for this key (RFC 8555 §7.3.1)."""
    signed = await authenticate(request, use_jwk=True)
    if signed.account is not None:
        raise AcmeProblem("malformed", "newAccount must be signed with a jwk, not a kid")
    tenant = tenant_of(request)
    account, created = await request.app[AUTHORITY].accounts.new_account(
        tenant, signed.jwk, signed.payload()
    )
    event_of(request)["account"] = account.id
    urls = _urls(request)
    return json_response(
        account_json(urls, account),
        status=201 if created else 200,
        location=urls.account(account.id),
    )


async def account(request: web.Request) -> web.Response:
    """POST-as-GET, update or deactivate the signing account (RFC 8555 §7.3.2, §7.3.6)."""
    signed = await authenticate(request)
    current = signed.require_account()
    if current.id != request.match_info["account_id"]:
        raise AcmeProblem("unauthorized", "The kid does not match the account URL")
    tenant = tenant_of(request)
    if not signed.jws.is_post_as_get:
        current = await request.app[AUTHORITY].accounts.update_account(
            tenant, current, signed.payload()
        )
    urls = _urls(request)
    return json_response(account_json(urls, current), location=urls.account(current.id))


async def account_orders(request: web.Request) -> web.Response:
    """The account's orders, a page at a time with a Link rel="next" (RFC 8555 §7.1.2.1)."""
    signed = await authenticate(request)
    current = signed.require_account()
    if current.id != request.match_info["account_id"]:
        raise NotFound()
    try:
        page = max(0, int(request.query.get("page", "0")))
    except ValueError:
        raise AcmeProblem("malformed", "page must be a number") from None
    tenant = tenant_of(request)
    ids = await tenant.store.list_order_ids(
        current.id, ORDERS_PAGE_SIZE + 1, page * ORDERS_PAGE_SIZE
    )
    urls = _urls(request)
    links: tuple[str, ...] = ()
    if len(ids) > ORDERS_PAGE_SIZE:
        ids = ids[:ORDERS_PAGE_SIZE]
        links = (f'<{urls.account_orders(current.id)}?page={page + 1}>;rel="next"',)
    return json_response({"orders": [urls.order(i) for i in ids]}, links=links)


async def key_change(request: web.Request) -> web.Response:
    """Roll the account over to a new key (RFC 8555 §7.3.5)."""
    signed = await authenticate(request)
    current = signed.require_account()
    tenant = tenant_of(request)
    urls = _urls(request)
    try:
        updated = await request.app[AUTHORITY].accounts.change_key(
            tenant, current, request_url(request), signed.payload()
        )
    except KeyInUse as exc:
        response = problem_response(exc)
        if exc.account_id:
            response.headers["Location"] = urls.account(exc.account_id)
        return response
    return json_response(account_json(urls, updated), location=urls.account(updated.id))
