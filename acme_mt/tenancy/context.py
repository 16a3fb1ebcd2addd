"""The tenant context: everything a request may touch, bound to one tenant.

Every request resolves its tenant once, from the URL, into a ``TenantContext``;
code below the front end only ever sees that. There is no call on it that
reaches another tenant's rows or keys.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from acme_mt.keystores.base import KeyPartition
from acme_mt.storage.base import TenantStore
from acme_mt.tenancy.nonces import NonceService
from acme_mt.tenancy.policy import TenantPolicy

if TYPE_CHECKING:
    from acme_mt.issuance import Issuer

SLUG_PATTERN = r"[a-z0-9][a-z0-9-]{1,62}"

#: How many challenge validations one tenant may run at once; a flood of
#: challenges in one tenant waits on its own semaphore, not on everyone's.
# Limitation: the semaphore is per process, so each worker process (and each
# replica) allows this many; a count of running validations in the shared
# store would bound the tenant as a whole.
VALIDATIONS_PER_TENANT = 32


@dataclass(frozen=True)
class TenantContext:
    """One tenant's store, key partition, issuer, policy, nonces and limits."""

    id: str
    slug: str
    status: str
    policy: TenantPolicy
    store: TenantStore
    keys: KeyPartition
    issuer: Issuer
    nonces: NonceService
    validation_slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(VALIDATIONS_PER_TENANT), compare=False
    )

    @property
    def active(self) -> bool:
        return self.status == "active"
