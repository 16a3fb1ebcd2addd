"""Provider bootstrap and tenant onboarding.

The first start on an empty data directory makes the provider root, the HTTPS
listener's certificate and the ``default`` tenant. Onboarding makes a tenant's
key partition and CA key, its CA certificate under the root and its store, and
only then the registry row that makes it visible, so a failure half-way leaves
nothing that serves. The CLI and the server share these functions, so a tenant
made by ``acme-mt tenant create`` while the server runs is the same as one made
by the server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.config import Settings
from acme_mt.errors import ConfigError, Conflict
from acme_mt.issuance import (
    CA_LABEL,
    ROOT_LABEL,
    create_root_ca,
    create_tenant_ca,
    create_tls_certificate,
)
from acme_mt.keystores.base import PROVIDER_PARTITION, KeyStore, SigningKey
from acme_mt.models import AuditEntry, utcnow
from acme_mt.storage.base import RegistryStore, StoreBackend, TenantRecord
from acme_mt.tenancy.context import SLUG_PATTERN
from acme_mt.tenancy.policy import TenantPolicy

logger = logging.getLogger(__name__)

ROOT_CERTIFICATE = "root_certificate"
DEFAULT_TENANT = "default"
#: Slugs that would collide with provider paths on the listeners.
RESERVED_SLUGS = frozenset({"admin", "healthz", "metrics", "root", "well-known", "api"})


@dataclass(frozen=True)
class Provider:
    """The provider root: its certificate and a handle on its key."""

    root_certificate: x509.Certificate
    root_key: SigningKey


async def ensure_provider(
    settings: Settings, registry: RegistryStore, keystore: KeyStore
) -> Provider:
    """Load the provider root, creating it on the first start.

    Limitation: the provider has no audit chain of its own yet, so the root key's
    ceremony is only logged; a provider-level chain in the registry would end that.
    """
    pem = await registry.get_value(ROOT_CERTIFICATE)
    if pem is not None:
        partition = await keystore.open_partition(PROVIDER_PARTITION)
        key = await partition.get(ROOT_LABEL)
        return Provider(x509.load_pem_x509_certificate(pem.encode()), key)
    partition = await keystore.open_partition(PROVIDER_PARTITION, create=True)
    certificate = await create_root_ca(
        partition, settings.provider.root_key_type, f"{settings.provider.name} Root CA"
    )
    await registry.set_value(
        ROOT_CERTIFICATE, certificate.public_bytes(serialization.Encoding.PEM).decode()
    )
    logger.info("created the provider root")
    return Provider(certificate, await partition.get(ROOT_LABEL))


def tls_paths(settings: Settings) -> tuple[Path, Path]:
    """The HTTPS listener's certificate and key files: ``[tls]`` or the generated pair."""
    if settings.tls.cert and settings.tls.key:
        return Path(settings.tls.cert), Path(settings.tls.key)
    if settings.tls.cert or settings.tls.key:
        raise ConfigError("[tls] needs both cert and key")
    directory = settings.data_dir / "tls"
    return directory / "cert.pem", directory / "key.pem"


async def ensure_tls(settings: Settings, provider: Provider) -> tuple[Path, Path]:
    """Make the listener's certificate for localhost and 127.0.0.1 unless ``[tls]`` names one."""
    cert_path, key_path = tls_paths(settings)
    if settings.tls.cert or (cert_path.exists() and key_path.exists()):
        return cert_path, key_path
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    host = settings.server.https_url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    hostnames = [host] if host and not host[0].isdigit() and not host.startswith("[") else []
    await create_tls_certificate(
        provider.root_key, provider.root_certificate, hostnames, [], cert_path, key_path
    )
    return cert_path, key_path


def check_slug(slug: str) -> None:
    """:raises ConfigError: the slug is not ``[a-z0-9][a-z0-9-]{1,62}`` or is reserved."""
    if not re.fullmatch(SLUG_PATTERN, slug) or slug in RESERVED_SLUGS:
        raise ConfigError(
            f"tenant slug {slug!r} must match {SLUG_PATTERN} and not be one of "
            f"{', '.join(sorted(RESERVED_SLUGS))}"
        )


async def onboard_tenant(
    settings: Settings,
    registry: RegistryStore,
    stores: StoreBackend,
    keystore: KeyStore,
    provider: Provider,
    slug: str,
    policy: dict[str, Any] | None = None,
    *,
    model: str = "shared",
    tier: str = "standard",
) -> TenantRecord:
    """Create a tenant in one step and return its registry record.

    :raises ConfigError: a bad slug or policy. :raises Conflict: the slug is taken.
    """
    check_slug(slug)
    parsed = TenantPolicy.from_dict(policy or {}, default_require_eab=slug != DEFAULT_TENANT)
    if await registry.get_tenant(slug) is not None:
        raise Conflict(f"tenant {slug!r} exists already")
    tenant_id = "t" + secrets.token_hex(10)
    partition = await keystore.open_partition(tenant_id, create=True)
    ca_certificate = await create_tenant_ca(
        provider.root_key,
        provider.root_certificate,
        partition,
        slug,
        parsed.ca_key_type,
        settings.provider.name,
        http_url=settings.server.http_url,
    )
    store = await stores.create_tenant_store(tenant_id, slug)
    try:
        await store.append_audit((key_ceremony(settings, tenant_id, ca_certificate),))
    finally:
        await store.close()
    record = TenantRecord(
        id=tenant_id,
        slug=slug,
        status="active",
        policy=policy or {},
        ca_certificate_pem=ca_certificate.public_bytes(serialization.Encoding.PEM).decode(),
        ca_key_label=CA_LABEL,
        created=utcnow(),
        model=model,
        tier=tier,
    )
    await registry.create_tenant(record)
    logger.info("onboarded tenant %s", slug)
    return record


def key_ceremony(settings: Settings, partition: str, certificate: x509.Certificate) -> AuditEntry:
    """The audit record of a CA key made for a tenant: who, when, which key, which fingerprint."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return AuditEntry(
        "key.generated",
        {
            "keystore": settings.keystore.backend,
            "partition": partition,
            "label": CA_LABEL,
            "spki_sha256": hashlib.sha256(spki).hexdigest(),
            "certificate_serial": format(certificate.serial_number, "x"),
            "subject": certificate.subject.rfc4514_string(),
        },
        actor=f"provider@{socket.gethostname()}:{os.getpid()}",
    )


async def set_tenant_status(registry: RegistryStore, slug: str, status: str) -> TenantRecord:
    """Suspend or reactivate a tenant; a running server follows within seconds."""
    record = await registry.get_tenant(slug)
    if record is None:
        raise ConfigError(f"no tenant {slug!r}")
    updated = replace(record, status=status)
    await registry.update_tenant(updated)
    return updated
