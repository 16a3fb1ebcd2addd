"""Each tenant's delegated OCSP signer: reused, issued and renewed (RFC 6960 §4.2.2.2).

The signer certificate lives seven days and is saved in the tenant's store
beside the label of its key, which stays in the tenant's key partition, so a
restart reuses it. It is replaced once less than ``RENEW_BEFORE`` remains:
that margin is longer than a response's validity window, so every response
expires before the certificate that signed it. The tenant's audit chain
records each new signer, before and after its certificate is signed.

Only the process holding the tenant's ``ocsp-signer`` lease in the store
issues a signer; the worker processes and replicas that find the signer due
at the same moment wait for the one it saves, so a tenant has one signer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from datetime import datetime, timedelta

from acme_mt.errors import AcmeMtError
from acme_mt.issuance.ocsp import OcspSigner, issue_ocsp_signer, load_ocsp_signer
from acme_mt.models import AuditEntry
from acme_mt.storage.base import OcspSignerRecord
from acme_mt.tenancy.context import TenantContext

logger = logging.getLogger(__name__)

#: Renew the signer when less than this remains; more than RESPONSE_WINDOW.
RENEW_BEFORE = timedelta(days=2)
SIGNER_JOB = "ocsp-signer"
#: Longer than issuing a signer takes, even on a slow HSM.
SIGNER_LEASE = timedelta(seconds=60)
#: How long a process waits for the lease holder's signer before it gives up.
ADOPT_WAIT_SECONDS = 30.0
ADOPT_POLL_SECONDS = 0.1


def new_holder() -> str:
    """A name for a lease holder in the store: host, process and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


#: This process, as it names itself when it holds the signer lease.
HOLDER = new_holder()


class SignerKeeper:
    """Holds one tenant's current delegated signer and replaces it when due."""

    def __init__(self, tenant: TenantContext) -> None:
        self._tenant = tenant
        self._signer: OcspSigner | None = None
        self._lock = asyncio.Lock()

    def due(self, now: datetime) -> bool:
        """Whether the next signature needs a new (or a first) signer.

        A signer that lasts as long as the tenant CA itself is never replaced:
        no newer one could last longer.
        """
        return self._due(self._signer, now)

    def _due(self, signer: OcspSigner | None, now: datetime) -> bool:
        if signer is None:
            return True
        ca_ends = self._tenant.issuer.certificate.not_valid_after_utc
        return signer.not_after - now <= RENEW_BEFORE and signer.not_after < ca_ends

    async def current(self, now: datetime) -> OcspSigner:
        """The signer to sign with now: the saved one if still good, else a new one.

        :raises acme_mt.errors.AcmeMtError: the key store or the store failed.
        """
        signer = self._signer
        if signer is not None and not self.due(now):
            return signer
        async with self._lock:
            if self.due(now):
                # Another replica (the refresh lease's holder) may have renewed it.
                stored = await self._load()
                if stored is not None and (
                    self._signer is None or stored.not_after > self._signer.not_after
                ):
                    self._signer = stored
            if self.due(now):
                self._signer = await self._issue_or_adopt(now)
            assert self._signer is not None
            return self._signer

    async def _issue_or_adopt(self, now: datetime) -> OcspSigner:
        """Issue a signer holding the lease, or take the one the lease's holder saves.

        :raises acme_mt.errors.AcmeMtError: the store failed, or the holder saved
            no signer in time.
        """
        store = self._tenant.store
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ADOPT_WAIT_SECONDS
        while True:
            if await store.claim_job(SIGNER_JOB, HOLDER, now, now + SIGNER_LEASE):
                stored = await self._load()  # the previous holder may have saved one
                if stored is not None and not self._due(stored, now):
                    return stored
                return await self._issue(now, self._signer)
            if loop.time() > deadline:
                raise AcmeMtError("another process holds the OCSP signer lease but saved none")
            await asyncio.sleep(ADOPT_POLL_SECONDS)
            stored = await self._load()
            if stored is not None and not self._due(stored, now):
                return stored

    async def _load(self) -> OcspSigner | None:
        record = await self._tenant.store.get_ocsp_signer()
        if record is None:
            return None
        try:
            key = await self._tenant.keys.get(record.key_label)
            return load_ocsp_signer(
                self._tenant.issuer, record.key_label, key, record.certificate_der
            )
        except (AcmeMtError, ValueError) as exc:
            logger.warning("saved OCSP signer %s is unusable: %s", record.key_label, exc)
            return None

    async def _issue(self, now: datetime, previous: OcspSigner | None) -> OcspSigner:
        tenant = self._tenant
        await tenant.store.append_audit([AuditEntry("ocsp.signer.requested", {})])
        signer = await issue_ocsp_signer(tenant.issuer, tenant.keys, now)
        record = OcspSignerRecord(
            key_label=signer.key_label,
            certificate_der=signer.certificate_der,
            not_after=signer.not_after,
            created=now,
        )
        outcome = AuditEntry(
            "ocsp.signer.issued",
            {
                "serial": format(signer.certificate.serial_number, "x"),
                "key_label": signer.key_label,
                "not_after": signer.not_after.isoformat(),
            },
        )
        await tenant.store.save_ocsp_signer(record, [outcome])
        if previous is not None:
            # Limitation: another replica may still sign with the previous key
            # until it reloads; destroying keys only once their certificate has
            # expired, from a list kept in the store, would end that.
            try:
                await tenant.keys.destroy(previous.key_label)
            except AcmeMtError as exc:
                logger.warning("could not destroy OCSP key %s: %s", previous.key_label, exc)
        logger.info(
            "tenant %s signs OCSP with %s until %s", tenant.slug, signer.key_label, signer.not_after
        )
        return signer
