"""Authorization and challenge resources (RFC 8555 §7.4.1, §7.5)."""

from __future__ import annotations

from aiohttp import web

from acme_mt.authority.identifiers import check_identifiers
from acme_mt.errors import AcmeProblem, NotFound
from acme_mt.models import Account, Authorization, AuthorizationStatus, ChallengeStatus, utcnow
from acme_mt.urls import AcmeUrls
from acme_mt.web.auth import authenticate
from acme_mt.web.keys import AUTHORITY, SETTINGS, event_of, tenant_of
from acme_mt.web.render import authorization_json, challenge_json, json_response

RETRY_AFTER_SECONDS = 1


def _urls(request: web.Request) -> AcmeUrls:
    return AcmeUrls(request.app[SETTINGS].server.https_url, tenant_of(request).slug)


async def _owned_authorization(
    request: web.Request, account: Account, authorization_id: str
) -> Authorization:
    """The authorization if it belongs to this account; expired ones are gone (certbot
    knows no ``expired`` status, see ACME-CLIENTS)."""
    found = await tenant_of(request).store.get_authorization(authorization_id)
    if found is None or found.expires <= utcnow():
        raise NotFound()
    if found.account_id != account.id:
        raise AcmeProblem("unauthorized", "The authorization belongs to another account")
    return found


def _authorization_response(
    request: web.Request, authorization: Authorization, *, status: int = 200
) -> web.Response:
    urls = _urls(request)
    retry = RETRY_AFTER_SECONDS if authorization.status == AuthorizationStatus.PENDING else None
    return json_response(
        authorization_json(urls, authorization),
        status=status,
        location=urls.authorization(authorization.id),
        retry_after=retry,
    )


async def new_authz(request: web.Request) -> web.Response:
    """Pre-authorize an identifier before ordering (RFC 8555 §7.4.1)."""
    signed = await authenticate(request)
    account = signed.require_account()
    tenant = tenant_of(request)
    payload = signed.payload()
    profile = tenant.policy.profile(None) or tenant.policy.all_profiles()[0]
    (identifier,) = check_identifiers(
        [payload.get("identifier")], tenant.policy, profile, allow_wildcard=False
    )
    authorization = await request.app[AUTHORITY].authorizations.new_preauthorization(
        tenant, account, identifier
    )
    event_of(request)["authorization"] = authorization.id
    return _authorization_response(request, authorization, status=201)


async def authorization(request: web.Request) -> web.Response:
    """POST-as-GET an authorization, or deactivate it (RFC 8555 §7.5, §7.5.2)."""
    signed = await authenticate(request)
    account = signed.require_account()
    current = await _owned_authorization(request, account, request.match_info["authz_id"])
    if not signed.jws.is_post_as_get:
        payload = signed.payload()
        if payload.get("status") != AuthorizationStatus.DEACTIVATED:
            raise AcmeProblem("malformed", 'Only {"status": "deactivated"} may be posted')
        current = await request.app[AUTHORITY].authorizations.deactivate(
            tenant_of(request), current
        )
    return _authorization_response(request, current)


async def challenge(request: web.Request) -> web.Response:
    """POST-as-GET a challenge, or answer it with ``{}`` to start validation (§7.5.1)."""
    signed = await authenticate(request)
    account = signed.require_account()
    authorization_id = request.match_info["authz_id"]
    current = await _owned_authorization(request, account, authorization_id)
    found = current.challenge(request.match_info["challenge_id"])
    if found is None:
        raise NotFound()
    event_of(request).update(challenge=found.type, identifier=current.identifier.value)
    if not signed.jws.is_post_as_get:
        signed.payload()
        current, found = await request.app[AUTHORITY].authorizations.respond(
            tenant_of(request), account, current, found
        )
    urls = _urls(request)
    retry = (
        RETRY_AFTER_SECONDS
        if found.status in (ChallengeStatus.PENDING, ChallengeStatus.PROCESSING)
        else None
    )
    return json_response(
        challenge_json(urls, authorization_id, found),
        links=(f'<{urls.authorization(authorization_id)}>;rel="up"',),
        retry_after=retry,
    )
