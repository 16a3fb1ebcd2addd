"""The entry point for challenge validation (RFC 8555 §7.5.1 and §8, RFC 8737).

The registration authority calls ``Validator.validate`` when a client answers
a challenge. It returns when the challenge is met and raises an
``AcmeProblem`` otherwise; it never writes any store. One ``Validator``
serves every tenant: they share a resolver and an HTTP client session, but no
connection, cookie or cache.
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
    """Checks challenges for the registration authority, for every tenant."""

    def __init__(self, settings: ValidationSettings) -> None:
        """Set up the resolver now, so a bad setting fails at start-up.

        :raises ConfigError: the resolver setting is unusable.
        """
        self._timeout = settings.timeout_seconds
        self.resolver = Resolver(settings.dns_resolver, self._timeout)
        self._http01 = Http01Validator(self.resolver, settings)
        self._tlsalpn01 = TlsAlpn01Validator(self.resolver, settings.tlsalpn01_port)

    async def validate(
        self,
        challenge_type: str,
        identifier: Identifier,
        token: str,
        key_authorization: str,
    ) -> None:
        """Return when the challenge is met; all steps share one timeout.

        :raises AcmeProblem: ``connection``, ``dns``, ``incorrectResponse``,
            ``tls`` or ``unauthorized``, with a detail that says what was
            tried and what was seen; ``malformed`` or
            ``unsupportedIdentifier`` for a challenge type or identifier
            this validator does not know.
        """
        _check_identifier(identifier)
        deadline = Deadline(self._timeout)
        ka = key_authorization

        # Limitation: validation runs from this one network vantage point
        # and connects to any address a name resolves to, private ranges
        # included (as a private PKI needs); corroboration from several
        # vantage points and a per-tenant allow-list of networks would end
        # both.
        try:
            if challenge_type == "http-01":
                await self._http01.validate(identifier, token, ka, deadline)
            elif challenge_type == "dns-01":
                await validate_dns01(self.resolver, identifier, ka, deadline)
            elif challenge_type == "tls-alpn-01":
                await self._tlsalpn01.validate(identifier, ka, deadline)
            else:
                detail = f"unknown challenge type {challenge_type!r}"
                raise AcmeProblem("malformed", detail)
        except AcmeProblem as exc:
            logger.debug("%s for %s failed: %s", challenge_type, identifier.value, exc)
            raise
        logger.debug("%s for %s succeeded", challenge_type, identifier.value)

    async def close(self) -> None:
        """Release the HTTP client session and the resolver's channel."""
        await self._http01.close()
        await self.resolver.close()


def _check_identifier(identifier: Identifier) -> None:
    """Refuse identifier types and IP values the challenges cannot handle."""
    if identifier.type == "dns":
        return
    if identifier.type != "ip":
        detail = f"cannot validate identifiers of type {identifier.type!r}"
        raise AcmeProblem("unsupportedIdentifier", detail)
    try:
        ipaddress.ip_address(identifier.value)
    except ValueError:
        detail = f"{identifier.value!r} is not an IP address"
        raise AcmeProblem("malformed", detail) from None
