"""Accounts (RFC 8555 §7.3): creation with or without EAB, update, deactivation, key rollover."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import josepy as jose

from acme_mt.authority.eab import check_binding
from acme_mt.errors import AcmeProblem, Conflict
from acme_mt.jws import load_jwk, parse_jws, public_jwk_json, thumbprint, verify_signature
from acme_mt.models import Account, AccountStatus, AuditEntry, new_id, utcnow
from acme_mt.tenancy.context import TenantContext
from acme_mt.urls import AcmeUrls

logger = logging.getLogger(__name__)

MAX_CONTACTS = 10


def check_contact(raw: Any) -> tuple[str, ...]:
    """Validate a contact list: mailto URLs only (RFC 8555 §7.3, §7.3.2)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise AcmeProblem("malformed", "contact must be a list of URL strings")
    if len(raw) > MAX_CONTACTS:
        raise AcmeProblem("invalidContact", f"At most {MAX_CONTACTS} contacts are accepted")
    for contact in raw:
        scheme, sep, address = contact.partition(":")
        if scheme.lower() != "mailto":
            raise AcmeProblem("unsupportedContact", "Only mailto: contacts are supported")
        local, at, domain = address.partition("@")
        if not sep or not at or not local or "." not in domain or "," in address or "?" in address:
            raise AcmeProblem("invalidContact", "A mailto: contact needs one plain address")
    return tuple(raw)


class AccountService:
    """The only writer of accounts."""

    def __init__(self, https_url: str) -> None:
        self._https_url = https_url

    async def new_account(
        self, tenant: TenantContext, jwk: jose.JWK, payload: dict[str, Any]
    ) -> tuple[Account, bool]:
        """Create or find the account of ``jwk``; the flag says whether it is new.

        :raises AcmeProblem: accountDoesNotExist, externalAccountRequired, malformed, ...
        """
        key_thumbprint = thumbprint(jwk)
        existing = await tenant.store.get_account_by_thumbprint(key_thumbprint)
        if existing is not None:
            return existing, False
        if payload.get("onlyReturnExisting") is True:
            raise AcmeProblem("accountDoesNotExist", "No account exists for this key")
        contact = check_contact(payload.get("contact"))
        urls = AcmeUrls(self._https_url, tenant.slug)
        binding = payload.get("externalAccountBinding")
        eab_kid: str | None = None
        if binding is not None:
            eab_kid = await check_binding(binding, jwk, urls.new_account(), tenant.store)
        elif tenant.policy.require_eab:
            raise AcmeProblem(
                "externalAccountRequired", "This tenant requires external account binding"
            )
        account = Account(
            id=new_id(),
            jwk=public_jwk_json(jwk),
            thumbprint=key_thumbprint,
            status=AccountStatus.VALID,
            contact=contact,
            created=utcnow(),
            eab_kid=eab_kid,
        )
        audit = AuditEntry(
            "account.created", {"account": account.id, "thumbprint": key_thumbprint, "eab": eab_kid}
        )
        try:
            stored = await tenant.store.create_account(account, (audit,))
        except Conflict:
            raise AcmeProblem(
                "unauthorized", "The external account binding key is not usable"
            ) from None
        logger.info("account %s created", stored.id)
        return stored, stored.id == account.id

    async def update_account(
        self, tenant: TenantContext, account: Account, payload: dict[str, Any]
    ) -> Account:
        """Change contacts or deactivate (RFC 8555 §7.3.2, §7.3.6)."""
        status = payload.get("status")
        if status is not None and status != AccountStatus.DEACTIVATED:
            raise AcmeProblem("malformed", "An account's status can only be set to deactivated")
        updated = account
        if "contact" in payload:
            updated = replace(updated, contact=check_contact(payload["contact"]))
        if status == AccountStatus.DEACTIVATED:
            updated = replace(updated, status=AccountStatus.DEACTIVATED)
        if updated == account:
            return account
        event = "account.deactivated" if status else "account.updated"
        await tenant.store.update_account(updated, (AuditEntry(event, {"account": account.id}),))
        return updated

    async def change_key(
        self, tenant: TenantContext, account: Account, outer_url: str, inner: Any
    ) -> Account:
        """Roll the account over to a new key (RFC 8555 §7.3.5).

        :raises AcmeProblem: malformed, or a Conflict carrying the other account's id.
        """
        if not isinstance(inner, dict):
            raise AcmeProblem("malformed", "The keyChange payload must be a JWS")
        parsed = parse_jws(inner)
        if parsed.header.jwk is None or parsed.header.kid is not None:
            raise AcmeProblem("malformed", "The inner JWS must carry the new key as jwk")
        if parsed.header.nonce is not None:
            raise AcmeProblem("malformed", "The inner JWS must not carry a nonce")
        if parsed.header.url != outer_url:
            raise AcmeProblem("malformed", "The inner JWS url differs from the outer one")
        new_key = load_jwk(parsed.header.jwk)
        verify_signature(parsed, new_key)
        body = parsed.payload_json()
        urls = AcmeUrls(self._https_url, tenant.slug)
        if body.get("account") != urls.account(account.id):
            raise AcmeProblem("malformed", "The inner payload names another account")
        try:
            old_key = load_jwk(body.get("oldKey"))
        except AcmeProblem:
            raise AcmeProblem("malformed", "The inner payload's oldKey is not a JWK") from None
        if thumbprint(old_key) != account.thumbprint:
            raise AcmeProblem("malformed", "oldKey is not the account's current key")
        new_thumbprint = thumbprint(new_key)
        holder = await tenant.store.get_account_by_thumbprint(new_thumbprint)
        if holder is not None:
            raise KeyInUse(holder.id)
        updated = replace(account, jwk=public_jwk_json(new_key), thumbprint=new_thumbprint)
        audit = AuditEntry(
            "account.key_changed",
            {"account": account.id, "old": account.thumbprint, "new": new_thumbprint},
        )
        try:
            await tenant.store.update_account(updated, (audit,))
        except Conflict:
            holder = await tenant.store.get_account_by_thumbprint(new_thumbprint)
            raise KeyInUse(holder.id if holder else "") from None
        return updated


class KeyInUse(AcmeProblem):
    """The new key of a rollover already belongs to an account (RFC 8555 §7.3.5: 409)."""

    def __init__(self, account_id: str) -> None:
        super().__init__("malformed", "The new key is already in use by an account", status=409)
        self.account_id = account_id
