"""The one entry point for challenge validation (RFC 8555 §7.5.1, §8; RFC 8737; RFC 8738).

The registration authority calls ``Validator.validate`` when a client answers a
challenge. It returns when the challenge is met and raises an ``AcmeProblem``
otherwise; it never writes any store. One ``Validator`` serves every tenant:
it shares a resolver and an HTTP client session, but no connection, cookie or
cache between validations.
"""

from __future__ import annotations

import ipaddress
import logging

from acme_mt.config import ValidationSettings
from acme_mt.errors import AcmeProblem
from acme_mt.models import Identifier
from acme_mt.validation.dns01 import validate_dns01
from acme_mt.validation.http01 import Http01Validator
from acme_mt.validation.resolver import Deadline, Resolver
from acme_mt.validation.tlsalpn01 import TlsAlpn01Validator

logger = logging.getLogger(__name__)

CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")


class Validator:
    """Checks http-01, dns-01 and tls-alpn-01 challenges for the registration authority."""

    def __init__(self, settings: ValidationSettings) -> None:
        """Set up the resolver at once, so a bad resolver setting fails at start-up.

        :raises ConfigError: the resolver setting is unusable.
        """
        self._timeout = settings.timeout_seconds
        self.resolver = Resolver(settings.dns_resolver, settings.timeout_seconds)
        self._http01 = Http01Validator(self.resolver, settings)
        self._tlsalpn01 = TlsAlpn01Validator(self.resolver, settings.tlsalpn01_port)

    async def validate(
        self, challenge_type: str, identifier: Identifier, token: str, key_authorization: str
    ) -> None:
        """Return when the challenge is met; every step together keeps one timeout.

        :raises AcmeProblem: ``connection``, ``dns``, ``incorrectResponse``,
            ``tls`` or ``unauthorized`` with a detail that says what was tried
            and what was seen; ``malformed`` or ``unsupportedIdentifier`` for a
            challenge type or identifier this validator does not know.
        """
        _check_identifier(identifier)
        deadline = Deadline(self._timeout)

        # Limitation: validation runs from this one network vantage point and
        # connects to any address the name resolves to, private ranges included
        # (what a private PKI needs); corroboration from several vantage points
        # and a per-tenant allow-list of networks would end both.
        try:
            if challenge_type == "http-01":
                await self._http01.validate(identifier, token, key_authorization, deadline)
            elif challenge_type == "dns-01":
                await validate_dns01(self.resolver, identifier, key_authorization, deadline)
            elif challenge_type == "tls-alpn-01":
                await self._tlsalpn01.validate(identifier, key_authorization, deadline)
            else:
                raise AcmeProblem("malformed", f"unknown challenge type {challenge_type!r}")
        except AcmeProblem as exc:
            logger.debug(
                "%s for %s %s failed: %s", challenge_type, identifier.type, identifier.value, exc
            )
            raise
        logger.debug("%s for %s %s succeeded", challenge_type, identifier.type, identifier.value)

    async def close(self) -> None:
        """Release the HTTP client session."""
        await self._http01.close()


def _check_identifier(identifier: Identifier) -> None:
    """Refuse identifier types and IP values the challenges cannot handle."""
    if identifier.type == "dns":
        return
    if identifier.type != "ip":
        raise AcmeProblem(
            "unsupportedIdentifier", f"cannot validate identifiers of type {identifier.type!r}"
        )
    try:
        ipaddress.ip_address(identifier.value)
    except ValueError:
        raise AcmeProblem("malformed", f"{identifier.value!r} is not an IP address") from None
