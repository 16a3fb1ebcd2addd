"""The URLs of a tenant's ACME resources (ARCHITECTURE: all below ``/{tenant}/acme/``).

One place builds and parses them so that handlers, the authority and tests
agree, and so that a URL of one tenant never parses as another's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AcmeUrls:
    """URL builder for one tenant, from the public HTTPS base URL."""

    https_url: str
    slug: str

    @property
    def base(self) -> str:
        return f"{self.https_url.rstrip('/')}/{self.slug}/acme"

    def directory(self) -> str:
        return f"{self.base}/directory"

    def new_nonce(self) -> str:
        return f"{self.base}/new-nonce"

    def new_account(self) -> str:
        return f"{self.base}/new-account"

    def new_order(self) -> str:
        return f"{self.base}/new-order"

    def new_authz(self) -> str:
        return f"{self.base}/new-authz"

    def revoke_cert(self) -> str:
        return f"{self.base}/revoke-cert"

    def key_change(self) -> str:
        return f"{self.base}/key-change"

    def renewal_info(self) -> str:
        return f"{self.base}/renewal-info"

    def account(self, account_id: str) -> str:
        return f"{self.base}/acct/{account_id}"

    def account_orders(self, account_id: str) -> str:
        return f"{self.base}/acct/{account_id}/orders"

    def order(self, order_id: str) -> str:
        return f"{self.base}/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.base}/order/{order_id}/finalize"

    def authorization(self, authorization_id: str) -> str:
        return f"{self.base}/authz/{authorization_id}"

    def challenge(self, authorization_id: str, challenge_id: str) -> str:
        return f"{self.base}/chall/{authorization_id}/{challenge_id}"

    def certificate(self, serial: str) -> str:
        return f"{self.base}/cert/{serial}"

    def account_id_from_kid(self, kid: str) -> str | None:
        """The account id in a kid URL of this tenant, or None for any other URL."""
        prefix = f"{self.base}/acct/"
        if not kid.startswith(prefix):
            return None
        account_id = kid[len(prefix) :]
        if not account_id or "/" in account_id:
            return None
        return account_id
