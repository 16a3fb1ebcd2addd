"""The EST route table and the one function that installs EST on the HTTPS app.

Operations answer at ``/.well-known/est/{label}/{op}`` (RFC 7030 §3.2.2) and,
for clients that append the well-known path to a base URL and cannot send a
label, at ``/{label}/.well-known/est/{op}``; the label is the tenant slug.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator

from aiohttp import web

from acme_mt.authority.enrollment import EnrollmentService
from acme_mt.events import Events
from acme_mt.storage.base import RegistryStore
from acme_mt.tenancy.directory import TenantDirectory
from est import handlers
from est.auth import ClientCertificateTrust
from est.handlers import EST_ENROLLMENT, EST_TENANTS, EST_TRUST

logger = logging.getLogger(__name__)

PREFIXES = ("/.well-known/est/{label}", "/{label}/.well-known/est")
#: How often CA certificates of tenants made by other processes are loaded.
TRUST_REFRESH_SECONDS = 30.0


def est_routes() -> list[web.RouteDef]:
    """Every EST operation under both prefixes, readable as one table."""
    operations = (
        ("GET", "cacerts", handlers.cacerts),
        ("POST", "simpleenroll", handlers.simpleenroll),
        ("POST", "simplereenroll", handlers.simplereenroll),
        ("POST", "serverkeygen", handlers.serverkeygen),
        ("GET", "csrattrs", handlers.csrattrs),
    )
    return [
        web.route(method, f"{prefix}/{operation}", handler)
        for prefix in PREFIXES
        for method, operation, handler in operations
    ]


def register_est(
    app: web.Application,
    tenants: TenantDirectory,
    enrollment: EnrollmentService,
    *,
    registry: RegistryStore,
    events: Events,
    tls_context: ssl.SSLContext | None = None,
) -> None:
    """Add EST to the HTTPS app; with the listener's context, accept tenant client certificates.

    The context's trust store gets every tenant CA: those in the registry at
    start-up, the CA of any tenant that issues a certificate, and new tenants
    of other processes every ``TRUST_REFRESH_SECONDS``.
    """
    app[EST_TENANTS] = tenants
    app[EST_ENROLLMENT] = enrollment
    app.add_routes(est_routes())
    if tls_context is None:
        return
    trust = ClientCertificateTrust(tls_context)
    app[EST_TRUST] = trust

    def learn_issuer(tenant_id: str, _serial: str) -> None:
        if trust.knows(tenant_id):
            return
        for context in tenants.loaded():
            if context.id == tenant_id:
                trust.add_tenant(context)
                return
        # Another worker issued for a tenant this one has not loaded: read its CA.
        asyncio.get_running_loop().create_task(_load(trust, registry))

    events.on_issuing(learn_issuer)

    async def keep_trust(_app: web.Application) -> AsyncIterator[None]:
        await trust.add_registry(registry)
        task = asyncio.create_task(_refresh(trust, registry))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(keep_trust)


async def _load(trust: ClientCertificateTrust, registry: RegistryStore) -> None:
    try:
        await trust.add_registry(registry)
    except Exception:
        logger.exception("loading tenant CA certificates failed")


async def _refresh(trust: ClientCertificateTrust, registry: RegistryStore) -> None:
    while True:
        await asyncio.sleep(TRUST_REFRESH_SECONDS)
        try:
            await trust.add_registry(registry)
        except Exception:
            logger.exception("loading tenant CA certificates failed")
