"""Notifications between components, so that OCSP and CRL publishing react within
seconds of a revocation instead of waiting for their schedule.

Listeners must be quick and must not raise; slow work is scheduled by them as a
task. The worker processes of one server pass each event on to the others
through their supervisor (``relay``); replicas on other machines learn of a
change from the store on their own schedule.
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

REVOKED, ISSUED = "revoked", "issued"


@dataclass
class Events:
    """Subscribers to certificate events; one instance per server process."""

    _listeners: dict[str, list[tuple[CertificateListener, bool]]] = field(
        default_factory=lambda: {REVOKED: [], ISSUED: []}
    )
    relay: Relay | None = None

    def on_revoked(self, listener: CertificateListener, *, local_only: bool = False) -> None:
        self._listeners[REVOKED].append((listener, local_only))

    def on_issued(self, listener: CertificateListener, *, local_only: bool = False) -> None:
        """``local_only`` listeners hear only of certificates this process issued."""
        self._listeners[ISSUED].append((listener, local_only))

    def revoked(self, tenant_id: str, serial: str) -> None:
        self._made(REVOKED, tenant_id, serial)

    def issued(self, tenant_id: str, serial: str) -> None:
        self._made(ISSUED, tenant_id, serial)

    def deliver(self, kind: str, tenant_id: str, serial: str) -> None:
        """An event another worker made; unknown kinds are ignored."""
        for listener, local_only in self._listeners.get(kind, ()):
            if not local_only:
                self._call(listener, tenant_id, serial)

    def _made(self, kind: str, tenant_id: str, serial: str) -> None:
        for listener, _local_only in self._listeners[kind]:
            self._call(listener, tenant_id, serial)
        if self.relay is not None:
            try:
                self.relay(kind, tenant_id, serial)
            except Exception:
                logger.exception("passing a certificate event to the other workers failed")

    @staticmethod
    def _call(listener: CertificateListener, tenant_id: str, serial: str) -> None:
        try:
            listener(tenant_id, serial)
        except Exception:
            logger.exception("certificate event listener failed")
