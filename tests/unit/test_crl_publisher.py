"""The CRL publishers: first signing, sharding, deltas, debounced re-signing, the root CRL."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.errors import StoreError
from acme_mt.issuance import Issuer
from acme_mt.models import AuditEntry, CertificateRecord, utcnow
from acme_mt.storage.base import TenantRecord
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.policy import TenantPolicy
from crl.published import CrlNumbers, CrlUnavailable, PublishedCrl
from crl.publisher import TenantCrlPublisher
from crl.root import RootCrlPublisher
from tests.unit.test_crl_issuance import make_ca

HTTP_URL = "http://localhost:8080"


class FakeStore:
    """The reads a CRL publisher makes, over a dict of certificate records."""

    def __init__(self) -> None:
        self.records: dict[str, CertificateRecord] = {}
        self.audit: list[AuditEntry] = []
        self.reads = 0
        self.fail = False

    def issue(self, serial: str, shard: int, revoked_ago: timedelta | None = None) -> None:
        now = utcnow()
        self.records[serial] = CertificateRecord(
            serial=serial,
            account_id=None,
            order_id=None,
            status="valid",
            not_before=now - timedelta(days=1),
            not_after=now + timedelta(days=30),
            created=now - timedelta(days=1),
            shard=shard,
        )
        if revoked_ago is not None:
            self.revoke(serial, now - revoked_ago)

    def revoke(self, serial: str, when: datetime | None = None, reason: int = 1) -> None:
        self.records[serial] = dataclasses.replace(
            self.records[serial],
            status="revoked",
            revoked_at=when or utcnow(),
            revocation_reason=reason,
        )

    async def list_revoked_certificates(self, shard: int | None) -> list[CertificateRecord]:
        self.reads += 1
        if self.fail:
            raise StoreError("the store is closed")
        return [
            record
            for record in self.records.values()
            if record.status == "revoked" and (shard is None or record.shard == shard)
        ]

    async def get_certificate(self, serial: str) -> CertificateRecord | None:
        return self.records.get(serial)

    async def append_audit(self, audit: Sequence[AuditEntry]) -> None:
        self.audit.extend(audit)


class FakeTenants:
    """A tenant directory holding contexts by slug."""

    def __init__(self) -> None:
        self.contexts: dict[str, TenantContext] = {}

    async def resolve(self, slug: str) -> TenantContext | None:
        return self.contexts.get(slug)


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    key, certificate = make_ca("Tenant CA")
    return Issuer("acme", certificate, key, certificate, HTTP_URL)


def context(issuer: Issuer, store: FakeStore, shards: int = 1, lifetime: int = 24) -> TenantContext:
    return TenantContext(
        id="t1",
        slug=issuer.slug,
        status="active",
        policy=TenantPolicy(crl_shards=shards, crl_lifetime_hours=lifetime),
        store=cast(Any, store),
        keys=cast(Any, None),
        issuer=issuer,
        nonces=cast(Any, None),
    )


def load(published: PublishedCrl) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(published.der)


def serials(published: PublishedCrl) -> set[str]:
    return {format(entry.serial_number, "x") for entry in load(published)}


def base_number(published: PublishedCrl) -> int:
    crl = load(published)
    return crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number


async def until_changed(
    publisher: TenantCrlPublisher,
    tenant: TenantContext,
    delta: bool,
    number: int,
    seconds: float = 4.0,
) -> PublishedCrl:
    """Poll (bounded) until the shard-0 CRL has a number other than ``number``."""
    for _ in range(int(seconds / 0.02)):
        published = await publisher.current(tenant, 0, delta)
        if published.number != number:
            return published
        await asyncio.sleep(0.02)
    raise AssertionError("the CRL was not re-signed")


async def test_first_request_signs_every_shard_with_only_its_entries(issuer: Issuer) -> None:
    store = FakeStore()
    for serial, shard in (("a1", 0), ("b2", 1), ("c3", 3), ("d4", 3)):
        store.issue(serial, shard, revoked_ago=timedelta(hours=2))
    store.issue("e5", 2)
    tenants = FakeTenants()
    tenant = tenants.contexts["acme"] = context(issuer, store, shards=4)
    publisher = TenantCrlPublisher(tenants)
    publisher.start()

    fulls = [await publisher.current(tenant, shard, False) for shard in range(4)]
    deltas = [await publisher.current(tenant, shard, True) for shard in range(4)]

    assert [serials(crl) for crl in fulls] == [{"a1"}, {"b2"}, set(), {"c3", "d4"}]
    assert store.reads == 1
    for shard, (full, delta) in enumerate(zip(fulls, deltas, strict=True)):
        crl = load(full)
        assert crl.is_signature_valid(issuer.key.public_key())
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
        assert idp.full_name == [x509.UniformResourceIdentifier(issuer.crl_url(shard))]
        freshest = crl.extensions.get_extension_for_class(x509.FreshestCRL).value
        assert freshest[0].full_name == [
            x509.UniformResourceIdentifier(f"{HTTP_URL}/acme/crl/{shard}-delta.crl")
        ]
        assert full.next_update - full.this_update == timedelta(hours=24)
        assert base_number(delta) == full.number == delta.number
        assert serials(delta) == set()
    await publisher.close()


async def test_delta_lists_only_revocations_since_its_base(issuer: Issuer) -> None:
    store = FakeStore()
    store.issue("a01", 0, revoked_ago=timedelta(days=1))
    store.issue("a02", 0, revoked_ago=timedelta(seconds=5))
    tenants = FakeTenants()
    tenant = tenants.contexts["acme"] = context(issuer, store)
    publisher = TenantCrlPublisher(tenants)
    publisher.start()

    full = await publisher.current(tenant, 0, False)
    delta = await publisher.current(tenant, 0, True)

    assert (serials(full), serials(delta)) == ({"a01", "a02"}, {"a02"})
    await publisher.close()


async def test_revocation_event_resigns_full_crl_after_debounce(issuer: Issuer) -> None:
    store = FakeStore()
    store.issue("aa", 0)
    tenants = FakeTenants()
    tenant = tenants.contexts["acme"] = context(issuer, store)
    publisher = TenantCrlPublisher(tenants, debounce=0.05, max_debounce=0.2, cooldown_factor=0)
    publisher.start()
    before = await publisher.current(tenant, 0, False)

    store.revoke("aa")
    publisher.revoked(tenant.id, "aa")
    after = await until_changed(publisher, tenant, False, before.number)

    assert serials(before) == set()
    assert serials(after) == {"aa"}
    assert after.number > before.number
    events = [entry.event for entry in store.audit]
    assert events == ["crl.signing", "crl.signed", "crl.signing", "crl.signed"]
    await publisher.close()


async def test_slow_full_crl_leaves_revocation_to_the_delta(issuer: Issuer) -> None:
    store = FakeStore()
    store.issue("bb", 0)
    tenants = FakeTenants()
    tenant = tenants.contexts["acme"] = context(issuer, store)
    publisher = TenantCrlPublisher(tenants, debounce=0.01, cooldown_factor=1e9)
    publisher.start()
    full = await publisher.current(tenant, 0, False)
    first_delta = await publisher.current(tenant, 0, True)

    store.revoke("bb")
    publisher.revoked(tenant.id, "bb")
    delta = await until_changed(publisher, tenant, True, first_delta.number)
    await publisher.tick()

    assert serials(delta) == {"bb"}
    assert base_number(delta) == full.number < delta.number
    assert await publisher.current(tenant, 0, False) == full
    await publisher.close()


async def test_full_crl_catches_up_when_its_cooldown_ends(issuer: Issuer) -> None:
    store = FakeStore()
    store.issue("dd", 0)
    tenants = FakeTenants()
    tenant = tenants.contexts["acme"] = context(issuer, store)
    publisher = TenantCrlPublisher(tenants, debounce=0.01, cooldown_factor=50)
    publisher.start()
    before = await publisher.current(tenant, 0, False)

    store.revoke("dd")
    publisher.revoked(tenant.id, "dd")
    after = await until_changed(publisher, tenant, False, before.number, seconds=20)

    assert serials(after) == {"dd"}
    signings = [entry.data["crls"] for entry in store.audit if entry.event == "crl.signing"]
    assert [[crl["delta"] for crl in batch] for batch in signings] == [
        [False, True],
        [True],
        [False, True],
    ]
    await publisher.close()


async def test_tick_follows_policy_changes(issuer: Issuer) -> None:
    store = FakeStore()
    tenants = FakeTenants()
    tenant = tenants.contexts["acme"] = context(issuer, store, lifetime=24)
    publisher = TenantCrlPublisher(tenants)
    publisher.start()
    before = await publisher.current(tenant, 0, False)

    tenant = tenants.contexts["acme"] = context(issuer, store, shards=2, lifetime=2)
    await publisher.tick()
    after = await until_changed(publisher, tenant, False, before.number)
    second = await publisher.current(tenant, 1, False)

    assert after.next_update - after.this_update == timedelta(hours=2)
    assert second.next_update - second.this_update == timedelta(hours=2)
    await publisher.close()


async def test_tenant_no_longer_served_is_forgotten(issuer: Issuer) -> None:
    store = FakeStore()
    store.issue("cc", 0)
    tenants = FakeTenants()
    tenant = tenants.contexts["acme"] = context(issuer, store)
    publisher = TenantCrlPublisher(tenants, debounce=0.01)
    publisher.start()
    await publisher.current(tenant, 0, False)
    reads = store.reads

    del tenants.contexts["acme"]
    await publisher.tick()
    store.revoke("cc")
    publisher.revoked(tenant.id, "cc")
    await asyncio.sleep(0.2)

    assert store.reads == reads
    await publisher.close()


async def test_signing_failure_is_unavailable_without_an_immediate_retry(issuer: Issuer) -> None:
    store = FakeStore()
    store.fail = True
    tenants = FakeTenants()
    tenant = tenants.contexts["acme"] = context(issuer, store)
    publisher = TenantCrlPublisher(tenants)
    publisher.start()

    for _ in range(3):
        with pytest.raises(CrlUnavailable):
            await publisher.current(tenant, 0, False)

    assert store.reads == 1
    await publisher.close()


def test_crl_numbers_grow_even_when_the_clock_does_not() -> None:
    clock = [5_000_000_000]
    numbers = CrlNumbers(lambda: clock[0])

    first, second = numbers.next(), numbers.next()
    clock[0] = 1_000
    third = numbers.next()
    clock[0] = 9_000_000_000
    fourth = numbers.next()

    assert (first, second, third, fourth) == (5_000_000, 5_000_001, 5_000_002, 9_000_000)


class FakeRegistry:
    def __init__(self, records: list[TenantRecord]) -> None:
        self.records = records

    async def list_tenants(self) -> list[TenantRecord]:
        return list(self.records)


def tenant_record(slug: str, status: str, certificate: x509.Certificate) -> TenantRecord:
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    return TenantRecord(f"id-{slug}", slug, status, {}, pem, "ca", datetime.now(UTC))


async def test_root_crl_lists_revoked_and_offboarded_tenant_cas() -> None:
    root_key, root = make_ca("Root")
    cas = {name: make_ca(f"{name} CA")[1] for name in ("active", "revoked", "gone")}
    yesterday = datetime.now(UTC) - timedelta(days=1)
    registry = FakeRegistry(
        [
            tenant_record("active", "active", cas["active"]),
            tenant_record("revoked", "revoked", cas["revoked"]),
            tenant_record("gone", "offboarded", cas["gone"]),
            tenant_record("old", "offboarded", make_ca("Old CA", yesterday)[1]),
        ]
    )
    publisher = RootCrlPublisher(cast(Any, registry), root, root_key)

    first = await publisher.current()
    registry.records[0] = tenant_record("active", "suspended", cas["active"])
    await publisher.tick()
    registry.records[0] = tenant_record("active", "offboarded", cas["active"])
    await publisher.tick()
    second = first
    for _ in range(500):
        second = await publisher.current()
        if second.number != first.number:
            break
        await asyncio.sleep(0.02)

    crl = load(first)
    assert crl.is_signature_valid(root_key.public_key())
    reasons = {entry.serial_number: entry.extensions for entry in crl}
    assert set(reasons) == {cas["revoked"].serial_number, cas["gone"].serial_number}
    assert len(reasons[cas["revoked"].serial_number]) == 0
    gone = reasons[cas["gone"].serial_number].get_extension_for_class(x509.CRLReason)
    assert gone.value.reason == x509.ReasonFlags.cessation_of_operation
    assert {entry.serial_number for entry in load(second)} == {
        cas[name].serial_number for name in ("active", "revoked", "gone")
    }
    assert second.number > first.number
    await publisher.close()
