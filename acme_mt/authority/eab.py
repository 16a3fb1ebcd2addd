"""External account binding (RFC 8555 §7.3.4): checking the inner JWS.

The inner JWS is MAC'd with the tenant's EAB key, carries the newAccount URL and
the EAB key id, and its payload is the account's own public key.
"""

from __future__ import annotations

import json
from typing import Any

import josepy as jose

from acme_mt.errors import AcmeProblem
from acme_mt.jws import load_jwk, parse_jws, public_jwk_json, signature_valid
from acme_mt.models import utcnow
from acme_mt.storage.base import StoreReader


async def check_binding(
    binding: Any, account_jwk: jose.JWK, new_account_url: str, store: StoreReader
) -> str:
    """Verify an externalAccountBinding and return its key id.

    Unknown, revoked and already bound keys all answer ``unauthorized`` alike,
    so key ids cannot be probed.

    :raises AcmeProblem: malformed or unauthorized.
    """
    if not isinstance(binding, dict):
        raise AcmeProblem("malformed", "externalAccountBinding must be a JWS object")
    parsed = parse_jws(binding, eab=True)
    header = parsed.header
    if header.nonce is not None:
        raise AcmeProblem("malformed", "The external account binding must not carry a nonce")
    if header.url != new_account_url:
        raise AcmeProblem("malformed", "The external account binding url is not newAccount's")
    if not header.kid:
        raise AcmeProblem("malformed", "The external account binding has no kid")
    try:
        bound_jwk = json.loads(parsed.payload)
    except (ValueError, UnicodeDecodeError):
        raise AcmeProblem(
            "malformed", "The external account binding payload is not a JWK"
        ) from None
    if bound_jwk != public_jwk_json(account_jwk):
        try:
            other = load_jwk(bound_jwk)
            same = other.thumbprint() == account_jwk.thumbprint()
        except AcmeProblem:
            same = False
        if not same:
            raise AcmeProblem("malformed", "The external account binding names another key")
    key = await store.get_eab_key(header.kid)
    if key is None or not key.usable(utcnow()):
        raise AcmeProblem("unauthorized", "The external account binding key is not usable")
    if not signature_valid(parsed, jose.JWKOct(key=key.hmac_key)):
        raise AcmeProblem("unauthorized", "The external account binding key is not usable")
    return header.kid
