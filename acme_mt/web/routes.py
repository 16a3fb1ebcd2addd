"""The ACME route table of a tenant, below ``/{tenant}/acme/`` (ARCHITECTURE URLs)."""

from __future__ import annotations

from aiohttp import web

from acme_mt.tenancy.context import SLUG_PATTERN
from acme_mt.web import account, authorization, certificate, directory, order, renewal

PREFIX = "/{tenant:" + SLUG_PATTERN + "}/acme"


def acme_routes() -> list[web.RouteDef]:
    """Every ACME endpoint, readable as one table."""
    return [
        web.get(f"{PREFIX}/directory", directory.directory),
        web.get(f"{PREFIX}/new-nonce", directory.new_nonce),
        web.post(f"{PREFIX}/new-account", account.new_account),
        web.post(f"{PREFIX}/new-order", order.new_order),
        web.post(f"{PREFIX}/new-authz", authorization.new_authz),
        web.post(f"{PREFIX}/revoke-cert", certificate.revoke_cert),
        web.post(f"{PREFIX}/key-change", account.key_change),
        web.post(f"{PREFIX}/acct/{{account_id}}", account.account),
        web.post(f"{PREFIX}/acct/{{account_id}}/orders", account.account_orders),
        web.post(f"{PREFIX}/order/{{order_id}}", order.order),
        web.post(f"{PREFIX}/order/{{order_id}}/finalize", order.finalize),
        web.post(f"{PREFIX}/authz/{{authz_id}}", authorization.authorization),
        web.post(f"{PREFIX}/chall/{{authz_id}}/{{challenge_id}}", authorization.challenge),
        web.post(f"{PREFIX}/cert/{{serial}}", certificate.certificate),
        web.get(f"{PREFIX}/renewal-info/{{cert_id}}", renewal.renewal_info),
    ]
