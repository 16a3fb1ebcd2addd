"""Tenant domain verification and pre-validated authorizations.

A tenant proves a domain once by publishing a TXT record at
``_acme-mt-verify.<domain>`` holding a token the server chose. Accounts bound
through an EAB key marked pre-validated then get authorizations that are valid
from the start for names under that domain. Such an authorization records how
and when the domain was proven, in a challenge of type ``verified-domain``
whose ``validated`` time is the proof's, and in the audit chain; CAA is still
checked for it (RFC 8659), as for a dns-01 validation.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace

from acme_mt.authority.caa import check_authorization_caa
from acme_mt.authority.identifiers import dns_name_problem
from acme_mt.errors import AcmeMtError, AcmeProblem
from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    AuthorizationStatus,
    Challenge,
    ChallengeStatus,
    VerifiedDomain,
    utcnow,
)
from acme_mt.storage.base import TenantStore
from acme_mt.tenancy.context import TenantContext
from acme_mt.validation import Validator
from acme_mt.validation.resolver import Resolver

logger = logging.getLogger(__name__)

VERIFY_LABEL = "_acme-mt-verify"
VERIFIED_DOMAIN_CHALLENGE = "verified-domain"


def record_name(domain: str) -> str:
    return f"{VERIFY_LABEL}.{domain}"


async def verify_domain(store: TenantStore, resolver: Resolver, raw_domain: str) -> VerifiedDomain:
    """Ask for, then check, the TXT record that proves a domain; safe to run again.

    :raises AcmeMtError: the domain is not a DNS name.
    """
    domain = raw_domain.lower().strip(".")
    reason = dns_name_problem(domain)
    if reason is not None or domain.startswith("*."):
        raise AcmeMtError(f"{raw_domain!r} is not a domain: {reason or 'no wildcards'}")
    known = {d.domain: d for d in await store.list_domains()}
    state = known.get(domain)
    if state is None:
        state = VerifiedDomain(domain, secrets.token_urlsafe(24), utcnow())
        await store.save_domain(state, (AuditEntry("domain.requested", {"domain": domain}, "cli"),))
    if state.verified is not None:
        return state
    try:
        values = await resolver.resolve_txt(record_name(domain))
    except AcmeProblem as exc:
        logger.info("TXT look-up for %s failed: %s", domain, exc.detail)
        values = []
    if state.token in (v.strip() for v in values):
        state = replace(state, verified=utcnow())
        audit = AuditEntry("domain.verified", {"domain": domain, "method": "dns-txt"}, "cli")
        await store.save_domain(state, (audit,))
    return state


async def prevalidate(
    tenant: TenantContext,
    account: Account,
    authorizations: list[Authorization],
    validator: Validator,
    https_url: str,
) -> list[Authorization]:
    """Turn new pending authorizations valid where the account's EAB key allows it."""
    if account.eab_kid is None:
        return authorizations
    key = await tenant.store.get_eab_key(account.eab_kid)
    if key is None or not key.policy.pre_validated:
        return authorizations
    domains = [d for d in await tenant.store.list_domains() if d.verified is not None]
    result = []
    for authorization in authorizations:
        proof = next((d for d in domains if d.covers(authorization.identifier.value)), None)
        if authorization.identifier.type != "dns" or proof is None:
            result.append(authorization)
            continue
        try:
            await check_authorization_caa(
                validator, tenant, https_url, account, authorization, "dns-01"
            )
        except AcmeProblem as exc:
            logger.info("pre-validation of %s refused: %s", authorization.identifier.value, exc)
            result.append(authorization)
            continue
        challenge = Challenge(
            id=authorization.challenges[0].id,
            authorization_id=authorization.id,
            type=VERIFIED_DOMAIN_CHALLENGE,
            token=proof.domain,
            status=ChallengeStatus.VALID,
            validated=proof.verified,
        )
        result.append(
            replace(authorization, status=AuthorizationStatus.VALID, challenges=(challenge,))
        )
    return result
