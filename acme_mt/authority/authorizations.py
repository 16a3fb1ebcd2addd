"""Authorizations and challenges (RFC 8555 §7.5): creation, validation, deactivation.

A challenge POST starts validation in the background and waits briefly for it,
so a responder that answers at once is seen as valid in the same reply; a slow
one leaves the challenge ``processing`` for the client to poll.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import replace
from datetime import datetime, timedelta

from acme_mt.authority.caa import check_authorization_caa
from acme_mt.errors import AcmeProblem
from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    AuthorizationStatus,
    Challenge,
    ChallengeStatus,
    Identifier,
    new_id,
    utcnow,
)
from acme_mt.tenancy.context import TenantContext
from acme_mt.validation import Validator

logger = logging.getLogger(__name__)

#: RFC 8555 §8.3, §8.4, RFC 8737: which challenges an identifier gets.
CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")
WILDCARD_CHALLENGE_TYPES = ("dns-01",)
#: RFC 8738 §7: no dns-01 for IP addresses.
IP_CHALLENGE_TYPES = ("http-01", "tls-alpn-01")


def new_authorization(
    account_id: str, identifier: Identifier, wildcard: bool, expires: datetime
) -> Authorization:
    """A pending authorization with a fresh token per challenge (RFC 8555 §8.1)."""
    authorization_id = new_id()
    types: tuple[str, ...]
    if identifier.type == "ip":
        types = IP_CHALLENGE_TYPES
    else:
        types = WILDCARD_CHALLENGE_TYPES if wildcard else CHALLENGE_TYPES
    challenges = tuple(
        Challenge(
            id=new_id(),
            authorization_id=authorization_id,
            type=kind,
            token=secrets.token_urlsafe(32),
            status=ChallengeStatus.PENDING,
        )
        for kind in types
    )
    return Authorization(
        id=authorization_id,
        account_id=account_id,
        identifier=identifier,
        status=AuthorizationStatus.PENDING,
        expires=expires,
        wildcard=wildcard,
        challenges=challenges,
        created=utcnow(),
    )


def is_expired(authorization: Authorization, now: datetime) -> bool:
    return authorization.expires <= now


class AuthorizationService:
    """The only writer of authorizations and challenges."""

    def __init__(self, validator: Validator, wait_seconds: float, https_url: str) -> None:
        self._validator = validator
        self._https_url = https_url
        self._wait_seconds = wait_seconds
        #: Validations under way, by challenge id: a second post joins the first.
        self._running: dict[
            str, tuple[asyncio.Task[Authorization | None], asyncio.Future[None]]
        ] = {}

    async def new_preauthorization(
        self, tenant: TenantContext, account: Account, identifier: Identifier
    ) -> Authorization:
        """RFC 8555 §7.4.1: an authorization made before any order."""
        lifetime = timedelta(hours=tenant.policy.authorization_lifetime_hours)
        authorization = new_authorization(account.id, identifier, False, utcnow() + lifetime)
        await tenant.store.create_authorization(
            authorization,
            (AuditEntry("authorization.created", {"authorization": authorization.id}),),
        )
        return authorization

    async def deactivate(
        self, tenant: TenantContext, authorization: Authorization
    ) -> Authorization:
        """RFC 8555 §7.5.2: a client gives up a pending or valid authorization."""
        if authorization.status not in (AuthorizationStatus.PENDING, AuthorizationStatus.VALID):
            raise AcmeProblem(
                "malformed",
                f"An authorization that is {authorization.status} cannot be deactivated",
            )
        updated = replace(authorization, status=AuthorizationStatus.DEACTIVATED)
        audit = AuditEntry("authorization.deactivated", {"authorization": authorization.id})
        await tenant.store.update_authorization(updated, (audit,))
        return updated

    async def respond(
        self,
        tenant: TenantContext,
        account: Account,
        authorization: Authorization,
        challenge: Challenge,
    ) -> tuple[Authorization, Challenge]:
        """The client says a challenge is ready: validate it (RFC 8555 §7.5.1).

        The answer is the outcome when validation ends within the wait, and the
        challenge ``processing`` otherwise. Only a validation that outlasts the
        wait is recorded as ``processing``: a quick one writes its outcome alone,
        and one cut off before either write leaves the challenge ``pending``,
        for the client to post again.
        """
        if is_expired(authorization, utcnow()):
            raise AcmeProblem("malformed", "The authorization has expired")
        if (
            challenge.status != ChallengeStatus.PENDING
            or authorization.status != AuthorizationStatus.PENDING
        ):
            return authorization, challenge
        processing = replace(challenge, status=ChallengeStatus.PROCESSING)
        authorization = _with_challenge(authorization, processing)
        running = self._running.get(challenge.id)
        if running is None:
            marked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # Limitation: the validation runs in this process only; if it dies after the
            # processing mark the challenge stays processing. A sweeper that re-queues old
            # processing challenges through a store-held job lease would end that.
            task = asyncio.create_task(
                self._validate(tenant, account, authorization, processing, marked)
            )
            running = self._running[challenge.id] = (task, marked)
            task.add_done_callback(lambda _: self._running.pop(challenge.id, None))
        task, marked = running
        await asyncio.wait((task, marked), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            return authorization, processing
        result = task.result()
        if result is None:
            current = await tenant.store.get_authorization(authorization.id)
            if current is None:
                return authorization, processing
            return current, current.challenge(challenge.id) or processing
        return result, result.challenge(challenge.id) or processing

    async def _validate(
        self,
        tenant: TenantContext,
        account: Account,
        authorization: Authorization,
        challenge: Challenge,
        marked: asyncio.Future[None],
    ) -> Authorization | None:
        """Validate, mark ``processing`` once the wait is over, record the outcome.

        Returns the authorization as recorded, or None when it could not be.
        """
        check = asyncio.ensure_future(self._check(tenant, account, authorization, challenge))
        try:
            done, _ = await asyncio.wait((check,), timeout=self._wait_seconds)
            if not done:
                try:
                    await tenant.store.update_authorization(authorization)
                except Exception:
                    logger.exception("could not mark %s processing", challenge.id)
                marked.set_result(None)
            error = await check
        finally:
            check.cancel()
        now = utcnow()
        if error is None:
            done_challenge = replace(challenge, status=ChallengeStatus.VALID, validated=now)
            status = AuthorizationStatus.VALID
        else:
            problem_json = error.to_json()
            problem_json["identifier"] = authorization.identifier.to_json()
            done_challenge = replace(challenge, status=ChallengeStatus.INVALID, error=problem_json)
            status = AuthorizationStatus.INVALID
        result = replace(_with_challenge(authorization, done_challenge), status=status)
        audit = AuditEntry(
            "authorization.validated" if error is None else "authorization.failed",
            {
                "authorization": authorization.id,
                "identifier": authorization.identifier.value,
                "challenge": challenge.type,
                "error": None if error is None else error.type,
            },
        )
        logger.info(
            "challenge %s %s for %s: %s",
            challenge.type,
            done_challenge.status,
            authorization.identifier.value,
            error.detail if error else "ok",
        )
        try:
            await tenant.store.update_authorization(result, (audit,))
        except Exception:
            logger.exception("could not record the validation of %s", challenge.id)
            return None
        return result

    async def _check(
        self,
        tenant: TenantContext,
        account: Account,
        authorization: Authorization,
        challenge: Challenge,
    ) -> AcmeProblem | None:
        """The problem that makes ``challenge`` fail, or None when it passes."""
        key_authorization = f"{challenge.token}.{account.thumbprint}"
        async with tenant.validation_slots:
            try:
                await self._validator.validate(
                    challenge.type, authorization.identifier, challenge.token, key_authorization
                )
                await check_authorization_caa(
                    self._validator, tenant, self._https_url, account, authorization, challenge.type
                )
            except AcmeProblem as exc:
                return exc
            except Exception:
                logger.exception("validation of %s crashed", challenge.id)
                return AcmeProblem("serverInternal", "Validation failed inside the server")
        return None

    async def close(self) -> None:
        tasks = [task for task, _ in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


_Validation = tuple["asyncio.Task[Authorization | None]", "asyncio.Future[None]"]


def _with_challenge(authorization: Authorization, challenge: Challenge) -> Authorization:
    challenges = tuple(challenge if c.id == challenge.id else c for c in authorization.challenges)
    return replace(authorization, challenges=challenges)
