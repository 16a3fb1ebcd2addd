"""The registration authority: the only writer of ACME state (RFC 8555 §7).

Handlers call it with a tenant context; each operation is one store
transaction. It calls ``acme_mt.validation`` for challenges and the tenant's
issuer for certificates.
"""

from __future__ import annotations

from acme_mt.authority.accounts import AccountService, KeyInUse
from acme_mt.authority.authorizations import AuthorizationService
from acme_mt.authority.enrollment import EnrollmentService
from acme_mt.authority.orders import OrderService
from acme_mt.authority.revocation import RevocationService, parse_revocation
from acme_mt.events import Events
from acme_mt.validation import Validator

__all__ = ["KeyInUse", "RegistrationAuthority", "parse_revocation"]


class RegistrationAuthority:
    """Accounts, orders, authorizations, revocations and EST enrollment for every tenant."""

    def __init__(
        self,
        https_url: str,
        validator: Validator,
        validation_wait: float,
        events: Events | None = None,
    ) -> None:
        self.events = events or Events()
        self.accounts = AccountService(https_url)
        self.orders = OrderService(self.events, validator, https_url)
        self.authorizations = AuthorizationService(validator, validation_wait, https_url)
        self.revocations = RevocationService(self.events)
        self.enrollment = EnrollmentService(self.events)

    async def close(self) -> None:
        await self.authorizations.close()
