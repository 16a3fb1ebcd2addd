"""Notifications between components, so that OCSP and CRL publishing react within
seconds of a revocation instead of waiting for their schedule.

Listeners must be quick and must not raise; slow work is scheduled by them as a
task. The worker processes of one server pass revocations, and the first
issuance of each tenant, on to the others through their supervisor
(``relay``); replicas on other machines learn of a change from the store on
their own schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

#: (tenant id, serial hex) of a certificate that was revoked or issued.
CertificateListener = Callable[[str, str], None]
#: (kind, tenant id, serial hex) of an event made here, for the other workers.
Relay = Callable[[str, str, str], None]

REVOKED, ISSUED, ISSUING = "revoked", "issued", "issuing"


@dataclass
class Events:
    """Subscribers to certificate events; one instance per server process.

    Three kinds: a revocation, heard by every worker; an issuance, heard only
    by the worker that signed (it pre-signs the OCSP response); and a tenant
    that begins issuing in some worker, heard by all once per worker, so that
    every worker learns the tenant's CA without a message per certificate.
    """

    _listeners: dict[str, list[CertificateListener]] = field(
        default_factory=lambda: {REVOKED: [], ISSUED: [], ISSUING: []}
    )
    _issuing: set[str] = field(default_factory=set)
    relay: Relay | None = None

    def on_revoked(self, listener: CertificateListener) -> None:
        self._listeners[REVOKED].append(listener)

    def on_issued(self, listener: CertificateListener) -> None:
        """``listener`` hears of every certificate this process issues."""
        self._listeners[ISSUED].append(listener)

    def on_issuing(self, listener: CertificateListener) -> None:
        """``listener`` hears of the first certificate each worker issues for a tenant."""
        self._listeners[ISSUING].append(listener)

    def revoked(self, tenant_id: str, serial: str) -> None:
        self._notify(REVOKED, tenant_id, serial)
        self._relay(REVOKED, tenant_id, serial)

    def issued(self, tenant_id: str, serial: str) -> None:
        self._notify(ISSUED, tenant_id, serial)
        if tenant_id not in self._issuing:
            self._issuing.add(tenant_id)
            self._notify(ISSUING, tenant_id, serial)
            self._relay(ISSUING, tenant_id, serial)

    def deliver(self, kind: str, tenant_id: str, serial: str) -> None:
        """An event another worker made; kinds not passed between workers are ignored."""
        if kind in (REVOKED, ISSUING):
            self._notify(kind, tenant_id, serial)

    def _notify(self, kind: str, tenant_id: str, serial: str) -> None:
        for listener in self._listeners[kind]:
            try:
                listener(tenant_id, serial)
            except Exception:
                logger.exception("certificate event listener failed")

    def _relay(self, kind: str, tenant_id: str, serial: str) -> None:
        if self.relay is not None:
            try:
                self.relay(kind, tenant_id, serial)
            except Exception:
                logger.exception("passing a certificate event to the other workers failed")
