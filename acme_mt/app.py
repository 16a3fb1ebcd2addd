"""Composition: open the back ends, bootstrap the provider, build both listeners.

Everything is wired here through constructors; there are no globals. The HTTPS
application carries ACME (and EST and admin as they arrive), the HTTP one the
relying-party resources. Middlewares are installed once, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.authority import RegistrationAuthority
from acme_mt.backends import open_keystore, open_store_backend, shared_nonce_factory
from acme_mt.config import Settings, split_host_port
from acme_mt.events import Events
from acme_mt.keystores.base import KeyStore
from acme_mt.public import ROOT_CERTIFICATE_KEY, public_routes
from acme_mt.storage.base import RegistryStore, StoreBackend
from acme_mt.tenancy.directory import TenantDirectory
from acme_mt.tenancy.lifecycle import (
    DEFAULT_TENANT,
    Provider,
    ensure_provider,
    ensure_tls,
    onboard_tenant,
)
from acme_mt.validation import Validator
from acme_mt.web.keys import AUTHORITY, LOG_EVERY_REQUEST, SETTINGS, TENANTS
from acme_mt.web.middleware import relying_party_routes, request_context
from acme_mt.web.routes import acme_routes
from acme_mt.web.shared_site import SharedSocketSite
from acme_mt.workers import Supervisor, WorkerLink, listen
from crl import setup_crl
from est import register_est
from ocsp import setup_ocsp

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the listeners share, opened once and closed once."""

    settings: Settings
    stores: StoreBackend
    registry: RegistryStore
    keystore: KeyStore
    provider: Provider
    tenants: TenantDirectory
    validator: Validator
    authority: RegistrationAuthority
    events: Events

    async def close(self) -> None:
        await self.authority.close()
        await self.validator.close()
        await self.tenants.close()
        await self.registry.close()
        await self.stores.close()
        await self.keystore.close()


async def open_services(
    settings: Settings, *, bootstrap: bool = True, nonce_key: bytes | None = None
) -> Services:
    """Open the back ends; on the first start make the root and the default tenant.

    ``nonce_key`` is the key the worker processes of one server share.
    """
    stores = open_store_backend(settings)
    keystore = open_keystore(settings)
    registry = await stores.open_registry()
    provider = await ensure_provider(settings, registry, keystore)
    if bootstrap and await registry.get_tenant(DEFAULT_TENANT) is None:
        await onboard_tenant(
            settings, registry, stores, keystore, provider, DEFAULT_TENANT, {"require_eab": False}
        )
    tenants = TenantDirectory(
        settings,
        registry,
        stores,
        keystore,
        provider.root_certificate,
        nonce_factory=shared_nonce_factory(stores, nonce_key),
    )
    validator = Validator(settings.validation)
    events = Events()
    authority = RegistrationAuthority(
        settings.server.https_url, validator, settings.validation.wait_seconds, events
    )
    return Services(
        settings, stores, registry, keystore, provider, tenants, validator, authority, events
    )


def _base_app(
    services: Services, middlewares: Sequence[Middleware], *, log_every_request: bool
) -> web.Application:
    app = web.Application(
        middlewares=middlewares, client_max_size=services.settings.server.max_body_bytes
    )
    app[LOG_EVERY_REQUEST] = log_every_request
    app[SETTINGS] = services.settings
    app[TENANTS] = services.tenants
    app[AUTHORITY] = services.authority
    app[ROOT_CERTIFICATE_KEY] = services.provider.root_certificate.public_bytes(
        serialization.Encoding.DER
    )
    return app


def https_app(services: Services, tls_context: ssl.SSLContext | None = None) -> web.Application:
    """ACME, EST (and the root certificate, for clients that bootstrap trust here).

    With the listener's ``tls_context``, EST keeps its client-certificate trust
    store holding every tenant CA.
    """
    app = _base_app(services, [request_context], log_every_request=True)
    app.add_routes(acme_routes())
    app.add_routes(public_routes())
    register_est(
        app,
        services.tenants,
        services.authority.enrollment,
        registry=services.registry,
        events=services.events,
        tls_context=tls_context,
    )

    async def refresh_tenants(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(services.tenants.run_refresh())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(refresh_tenants)
    return app


def http_app(services: Services) -> web.Application:
    """OCSP, CRLs, CA certificates and health.

    No middleware: CRLs, CA certificates and health run in the relying-party
    request context (``relying_party_routes``), and the OCSP endpoint, the
    busiest by far, keeps its own. OCSP is registered first because the
    router tries routes in order.
    """
    log_every_request = services.settings.server.log_relying_party_requests
    app = _base_app(services, [], log_every_request=log_every_request)
    app.add_routes(setup_ocsp(app, services))
    routes = [*setup_crl(app, services), *public_routes()]
    app.add_routes(relying_party_routes(routes, log_every_request=log_every_request))
    return app


def server_ssl_context(
    cert_path: Path, key_path: Path, client_root: x509.Certificate | None = None
) -> ssl.SSLContext:
    """The HTTPS listener's context; with ``client_root`` it asks for client certificates.

    EST (RFC 7030 §3.3.2) authenticates by client certificate, but ACME and
    anonymous EST share the listener, so a certificate is asked for and never
    required. A presented one must chain to the root, which every tenant CA does.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    if client_root is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(
            cadata=client_root.public_bytes(serialization.Encoding.PEM).decode()
        )
    return context


async def run_server(
    settings: Settings, stop: asyncio.Event | None = None, link: WorkerLink | None = None
) -> None:
    """Serve both listeners until SIGINT/SIGTERM (or ``stop`` is set).

    With ``link`` this process is one of several workers: it shares the
    listening ports, the nonces and the certificate events with the others,
    and its supervisor announces the URLs.
    """
    services = await open_services(settings, nonce_key=link.nonce_key if link else None)
    if link is not None:
        services.events.relay = link.relay
    cert_path, key_path = await ensure_tls(settings, services.provider)
    tls_context = server_ssl_context(cert_path, key_path, services.provider.root_certificate)
    secure = web.AppRunner(https_app(services, tls_context), access_log=None)
    plain = web.AppRunner(http_app(services), access_log=None)
    await secure.setup()
    await plain.setup()
    sites: list[web.BaseSite]
    if link is None:
        https_host, https_port = split_host_port(settings.server.https_listen, 8443)
        http_host, http_port = split_host_port(settings.server.http_listen, 8080)
        sites = [
            web.TCPSite(secure, https_host, https_port, ssl_context=tls_context),
            web.TCPSite(plain, http_host, http_port),
        ]
    else:
        https_sock = socket.socket(fileno=link.listeners["https"])
        http_sock = socket.socket(fileno=link.listeners["http"])
        sites = [
            SharedSocketSite(secure, https_sock, ssl_context=tls_context),
            SharedSocketSite(plain, http_sock, ssl_context=None),
        ]
    stop = stop or _stop_on_signals()
    listening: asyncio.Task[None] | None = None
    try:
        if link is not None:
            link.ready()
            if not await _until_stopped(link.wait_to_serve(services.events), stop):
                return
        for site in sites:
            await site.start()
        if link is None:
            _announce(settings)
        else:
            listening = asyncio.create_task(link.listen(services.events, stop))
        await stop.wait()
    finally:
        if listening is not None:
            listening.cancel()
            link.close()  # type: ignore[union-attr]
        await secure.cleanup()
        await plain.cleanup()
        await services.close()


async def run_supervisor(
    settings: Settings, command: list[str], count: int, stop: asyncio.Event | None = None
) -> None:
    """Bind the listeners and make what the workers share once, then run ``count``
    workers on them until stopped."""
    with contextlib.ExitStack() as sockets:
        listeners = {
            "https": sockets.enter_context(listen(settings.server.https_listen, 8443)),
            "http": sockets.enter_context(listen(settings.server.http_listen, 8080)),
        }
        services = await open_services(settings)
        try:
            await ensure_tls(settings, services.provider)
        finally:
            await services.close()
        stop = stop or _stop_on_signals()
        await Supervisor(command, count, listeners).run(stop, lambda: _announce(settings, count))


async def run_worker(settings: Settings, fd: int) -> None:
    """One worker under a supervisor, on the socket it was given."""
    link = await WorkerLink.connect(fd)
    await run_server(settings, link=link)


async def _until_stopped(waiting: Coroutine[Any, Any, bool], stop: asyncio.Event) -> bool:
    """The result of ``waiting``, or False as soon as ``stop`` is set."""
    task = asyncio.create_task(waiting)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
    return task.done() and not task.cancelled() and task.result()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def _announce(settings: Settings, workers: int = 1) -> None:
    base = settings.server.https_url.rstrip("/")
    processes = f" ({workers} worker processes)" if workers > 1 else ""
    print(
        f"acme-mt serving{processes}; ACME directory: {base}/{DEFAULT_TENANT}/acme/directory",
        flush=True,
    )
    print(f"root certificate: {settings.server.http_url.rstrip('/')}/root.pem", flush=True)
