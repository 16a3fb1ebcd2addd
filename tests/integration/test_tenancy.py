"""Onboarding through the CLI while the server runs: served within seconds, key ceremony audited."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.storage.sqlite import SqliteBackend
from tests.support.live import LiveServer


async def test_tenant_created_by_cli_is_served_and_its_key_ceremony_audited(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    created = live_server.create_tenant("onboard-seen", "require_eab = false\n")
    assert created["directory_url"] == live_server.directory_url("onboard-seen")
    async with http_session.get(created["directory_url"], ssl=live_server.ssl_context()) as resp:
        assert resp.status == 200
    ca = x509.load_pem_x509_certificate(created["ca_certificate"].encode())
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    backend = SqliteBackend(live_server.data_dir)
    registry = await backend.open_registry()
    record = await registry.get_tenant("onboard-seen")
    assert record is not None
    store = await backend.open_tenant_store(record.id, record.slug)
    try:
        audit = await store.list_audit()
    finally:
        await store.close()
        await registry.close()
        await backend.close()
    ceremonies = [a for a in audit if a.event == "key.generated"]
    assert len(ceremonies) == 1
    assert ceremonies[0].data["spki_sha256"] == hashlib.sha256(spki).hexdigest()
    assert ceremonies[0].data["label"] == "ca"
    assert ceremonies[0].actor.startswith("provider@")


async def test_suspended_tenant_disappears_within_seconds(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    created = live_server.create_tenant("onboard-gone", "require_eab = false\n")
    url = created["directory_url"]
    async with http_session.get(url, ssl=live_server.ssl_context()) as resp:
        assert resp.status == 200
    live_server.cli("tenant", "suspend", "onboard-gone")
    status = 200
    for _ in range(40):
        async with http_session.get(url, ssl=live_server.ssl_context()) as resp:
            status = resp.status
        if status == 404:
            break
        await asyncio.sleep(0.25)
    assert status == 404
