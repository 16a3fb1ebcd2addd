"""When and for whom CAA is checked (RFC 8659, RFC 8657), on top of ``validation.caa``.

CAA is checked when a dns identifier is validated, and again at finalize for
any authorization whose check is older than the tenant's ``caa_recheck_hours``.
IP identifiers have no CAA (RFC 8738 §7).
"""

from __future__ import annotations

from datetime import timedelta

from acme_mt.models import Account, Authorization, ChallengeStatus, utcnow
from acme_mt.tenancy.context import TenantContext
from acme_mt.urls import AcmeUrls
from acme_mt.validation import Validator
from acme_mt.validation.caa import CaaRequest, check_caa


def caa_identities(tenant: TenantContext, https_url: str) -> tuple[str, ...]:
    """The issuer domains that name this tenant in CAA: its policy's, or the server host."""
    if tenant.policy.caa_identities:
        return tenant.policy.caa_identities
    host = https_url.split("://", 1)[-1].split("/", 1)[0]
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host,)


async def check_authorization_caa(
    validator: Validator,
    tenant: TenantContext,
    https_url: str,
    account: Account,
    authorization: Authorization,
    method: str,
) -> None:
    """Raise a ``caa`` problem when CAA forbids this tenant to issue for the identifier."""
    if authorization.identifier.type != "dns":
        return
    request = CaaRequest(
        name=authorization.identifier.value,
        wildcard=authorization.wildcard,
        identities=caa_identities(tenant, https_url),
        account_uri=AcmeUrls(https_url, tenant.slug).account(account.id),
        method=method,
    )
    await check_caa(validator.resolver, request)


def needs_recheck(tenant: TenantContext, authorization: Authorization) -> str | None:
    """The method to recheck CAA with when the last check is too old, else None."""
    if authorization.identifier.type != "dns":
        return None
    limit = timedelta(hours=tenant.policy.caa_recheck_hours)
    for challenge in authorization.challenges:
        if challenge.status == ChallengeStatus.VALID:
            if challenge.validated is None or utcnow() - challenge.validated > limit:
                # A domain proven by a TXT record is rechecked as a DNS validation.
                return "dns-01" if challenge.type == "verified-domain" else challenge.type
            return None
    return None
