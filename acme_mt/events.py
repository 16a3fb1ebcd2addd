"""In-process notifications between components, so that OCSP and CRL publishing
react within seconds of a revocation instead of waiting for their schedule.

Listeners must be quick and must not raise; slow work is scheduled by them as a
task. Replicas that did not make the change learn of it from the store on their
own schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

#: (tenant id, serial hex) of a certificate that was revoked or issued.
CertificateListener = Callable[[str, str], None]


@dataclass
class Events:
    """Subscribers to certificate events; one instance per server process."""

    _revoked: list[CertificateListener] = field(default_factory=list)
    _issued: list[CertificateListener] = field(default_factory=list)

    def on_revoked(self, listener: CertificateListener) -> None:
        self._revoked.append(listener)

    def on_issued(self, listener: CertificateListener) -> None:
        self._issued.append(listener)

    def revoked(self, tenant_id: str, serial: str) -> None:
        self._fire(self._revoked, tenant_id, serial)

    def issued(self, tenant_id: str, serial: str) -> None:
        self._fire(self._issued, tenant_id, serial)

    @staticmethod
    def _fire(listeners: list[CertificateListener], tenant_id: str, serial: str) -> None:
        for listener in listeners:
            try:
                listener(tenant_id, serial)
            except Exception:
                logger.exception("certificate event listener failed")
