"""The store contract of ``acme_mt.storage.base``, run against every back end."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from acme_mt.audit import GENESIS_HASH, verify_chain
from acme_mt.errors import Conflict, StoreError
from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    CertificateRecord,
    Challenge,
    EabKey,
    Identifier,
    Order,
    utcnow,
)
from acme_mt.storage.base import OcspResponseRecord, StoreBackend, TenantRecord, TenantStore
from acme_mt.storage.migrate import apply_sqlite_migrations, split_sqlite_statements
from acme_mt.storage.sqlite import TENANT_FILE, SqliteBackend

NOW = utcnow()
DAY = timedelta(days=1)


def make_account(
    account_id: str = "acct-1", thumbprint: str = "tp-1", eab_kid: str | None = None
) -> Account:
    return Account(
        id=account_id,
        jwk={"kty": "EC", "crv": "P-256", "x": thumbprint, "y": "y"},
        thumbprint=thumbprint,
        status="valid",
        contact=("mailto:ops@example.com",),
        created=NOW,
        eab_kid=eab_kid,
    )


def make_authorization(
    authorization_id: str,
    account_id: str = "acct-1",
    value: str = "example.com",
    *,
    status: str = "pending",
    wildcard: bool = False,
    expires: datetime = NOW + 7 * DAY,
    created: datetime = NOW,
) -> Authorization:
    challenges = tuple(
        Challenge(f"{authorization_id}-{kind}", authorization_id, kind, f"token-{kind}", "pending")
        for kind in ("http-01", "dns-01", "tls-alpn-01")
    )
    return Authorization(
        id=authorization_id,
        account_id=account_id,
        identifier=Identifier("dns", value),
        status=status,
        expires=expires,
        wildcard=wildcard,
        challenges=challenges,
        created=created,
    )


def make_order(
    order_id: str,
    authorization_ids: tuple[str, ...],
    account_id: str = "acct-1",
    *,
    status: str = "pending",
    created: datetime = NOW,
) -> Order:
    return Order(
        id=order_id,
        account_id=account_id,
        status=status,
        identifiers=tuple(Identifier("dns", f"{a}.example.com") for a in authorization_ids),
        authorization_ids=authorization_ids,
        expires=NOW + 7 * DAY,
        created=created,
        not_after=NOW + 30 * DAY,
        profile="tlsserver",
    )


def make_certificate(
    serial: str,
    order_id: str | None = "order-1",
    *,
    shard: int = 0,
    not_after: datetime | None = None,
) -> CertificateRecord:
    return CertificateRecord(
        serial=serial,
        account_id="acct-1",
        order_id=order_id,
        status="pending",
        not_before=NOW,
        not_after=not_after or NOW + 90 * DAY,
        created=NOW,
        shard=shard,
        channel="acme" if order_id else "est",
    )


def make_tenant(slug: str, created: datetime = NOW) -> TenantRecord:
    return TenantRecord(
        id=f"id-{slug}",
        slug=slug,
        status="active",
        policy={"require_eab": True, "crl_shards": 2},
        ca_certificate_pem="-----BEGIN CERTIFICATE-----\n...",
        ca_key_label=f"ca-{slug}",
        created=created,
    )


def entry(event: str, **data: Any) -> AuditEntry:
    return AuditEntry(event, data)


async def ready_order(store: TenantStore, order_id: str = "order-1") -> Order:
    """An account with a ready order of one valid authorization."""
    if await store.get_account("acct-1") is None:
        await store.create_account(make_account())
    authorization = make_authorization(f"authz-{order_id}", status="valid")
    order = make_order(order_id, (authorization.id,), status="ready")
    await store.create_order(order, [authorization])
    return order


async def audit_events(store: TenantStore) -> list[str]:
    return [record.event for record in await store.list_audit()]


# The registry and the back end.


async def test_registry_create_tenant_round_trips(backend: StoreBackend) -> None:
    registry = await backend.open_registry()
    await registry.create_tenant(make_tenant("alpha"))

    assert await registry.get_tenant("alpha") == make_tenant("alpha")
    assert await registry.get_tenant("beta") is None


async def test_registry_create_tenant_taken_slug_conflicts(backend: StoreBackend) -> None:
    registry = await backend.open_registry()
    await registry.create_tenant(make_tenant("alpha"))

    with pytest.raises(Conflict):
        await registry.create_tenant(replace(make_tenant("alpha"), id="other-id"))
    assert await registry.list_tenants() == [make_tenant("alpha")]


async def test_registry_update_tenant_persists_and_unknown_raises(backend: StoreBackend) -> None:
    registry = await backend.open_registry()
    await registry.create_tenant(make_tenant("alpha"))
    suspended = replace(make_tenant("alpha"), status="suspended", tier="gold", policy={})

    await registry.update_tenant(suspended)

    assert await registry.get_tenant("alpha") == suspended
    with pytest.raises(StoreError):
        await registry.update_tenant(make_tenant("nobody"))


async def test_registry_list_tenants_oldest_first(backend: StoreBackend) -> None:
    registry = await backend.open_registry()
    await registry.create_tenant(make_tenant("newer", NOW))
    await registry.create_tenant(make_tenant("older", NOW - DAY))

    assert [t.slug for t in await registry.list_tenants()] == ["older", "newer"]


async def test_registry_set_value_replaces_earlier(backend: StoreBackend) -> None:
    registry = await backend.open_registry()
    assert await registry.get_value("root_pem") is None

    await registry.set_value("root_pem", "first")
    await registry.set_value("root_pem", "second")

    assert await registry.get_value("root_pem") == "second"


async def test_backend_create_tenant_store_twice_conflicts(backend: StoreBackend) -> None:
    await backend.create_tenant_store("tenant-1", "alpha")

    with pytest.raises(Conflict):
        await backend.create_tenant_store("tenant-2", "alpha")


async def test_backend_open_unknown_tenant_store_raises(backend: StoreBackend) -> None:
    with pytest.raises(StoreError):
        await backend.open_tenant_store("tenant-9", "nobody")


async def test_backend_reopened_store_keeps_rows(
    backend: StoreBackend, second_backend: StoreBackend, store: TenantStore
) -> None:
    await store.create_account(make_account())
    await backend.close()

    reopened = await second_backend.open_tenant_store("tenant-1", "alpha")

    assert await reopened.get_account("acct-1") == make_account()


# Accounts and EAB keys.


async def test_account_create_round_trips_with_utc_times(store: TenantStore) -> None:
    created = await store.create_account(make_account(), [entry("account.created", id="acct-1")])

    by_id = await store.get_account("acct-1")
    assert created == by_id == make_account()
    assert await store.get_account_by_thumbprint("tp-1") == make_account()
    assert by_id is not None and by_id.created.utcoffset() == timedelta(0)
    assert await store.get_account("acct-2") is None


async def test_account_create_same_thumbprint_returns_existing(store: TenantStore) -> None:
    await store.create_eab_key(EabKey("kid-1", b"secret", NOW))
    first = await store.create_account(make_account("acct-1"), [entry("account.created")])

    second = await store.create_account(
        make_account("acct-2", eab_kid="kid-1"), [entry("account.created")]
    )

    assert second == first
    assert await store.get_account("acct-2") is None
    assert await store.get_eab_key("kid-1") == EabKey("kid-1", b"secret", NOW)
    assert await audit_events(store) == ["account.created"]


async def test_account_create_binds_eab_key_once(store: TenantStore) -> None:
    await store.create_eab_key(EabKey("kid-1", b"secret", NOW))

    await store.create_account(make_account("acct-1", "tp-1", eab_kid="kid-1"))
    with pytest.raises(Conflict):
        await store.create_account(make_account("acct-2", "tp-2", eab_kid="kid-1"))

    key = await store.get_eab_key("kid-1")
    assert key is not None and key.account_id == "acct-1"
    assert await store.get_account("acct-2") is None


@pytest.mark.parametrize("revoked", [True, False], ids=["revoked", "unknown"])
async def test_account_create_unusable_eab_key_conflicts(store: TenantStore, revoked: bool) -> None:
    if revoked:
        await store.create_eab_key(EabKey("kid-1", b"secret", NOW, revoked=True))

    with pytest.raises(Conflict):
        await store.create_account(make_account(eab_kid="kid-1"), [entry("account.created")])

    assert await store.get_account("acct-1") is None
    assert await store.list_audit() == []


async def test_account_create_race_across_processes_one_account(
    store: TenantStore, second_backend: StoreBackend
) -> None:
    other = await second_backend.open_tenant_store("tenant-1", "alpha")

    results = await asyncio.gather(
        *((store if i % 2 else other).create_account(make_account(f"acct-{i}")) for i in range(10))
    )

    assert len({account.id for account in results}) == 1
    winner = results[0].id
    assert [await store.get_account(f"acct-{i}") is not None for i in range(10)].count(True) == 1
    assert await store.get_account_by_thumbprint("tp-1") == make_account(winner)


async def test_account_update_persists(store: TenantStore) -> None:
    await store.create_account(make_account())
    changed = replace(
        make_account(), contact=(), status="deactivated", thumbprint="tp-new", jwk={"k": 1}
    )

    await store.update_account(changed)

    assert await store.get_account("acct-1") == changed
    assert await store.get_account_by_thumbprint("tp-1") is None


async def test_account_update_taken_thumbprint_conflicts(store: TenantStore) -> None:
    await store.create_account(make_account("acct-1", "tp-1"))
    await store.create_account(make_account("acct-2", "tp-2"))

    with pytest.raises(Conflict):
        await store.update_account(replace(make_account("acct-2", "tp-1"), status="x"))

    assert await store.get_account("acct-2") == make_account("acct-2", "tp-2")


async def test_eab_key_duplicate_kid_conflicts(store: TenantStore) -> None:
    await store.create_eab_key(EabKey("kid-1", b"\x00\xffkey", NOW))

    with pytest.raises(Conflict):
        await store.create_eab_key(EabKey("kid-1", b"other", NOW))

    assert await store.get_eab_key("kid-1") == EabKey("kid-1", b"\x00\xffkey", NOW)
    assert await store.get_eab_key("kid-2") is None


# Orders, authorizations and challenges.


async def test_order_create_keeps_authorization_sequence(store: TenantStore) -> None:
    await store.create_account(make_account())
    reused = make_authorization("authz-m", value="m.example.com", status="valid")
    await store.create_order(make_order("order-0", ("authz-m",)), [reused])
    fresh = [make_authorization("authz-z", value="z.example.com"), make_authorization("authz-a")]
    order = make_order("order-1", ("authz-z", "authz-m", "authz-a"))

    await store.create_order(order, fresh)

    assert await store.get_order("order-1") == order
    assert await store.get_authorization("authz-z") == fresh[0]
    assert await store.get_authorization("authz-m") == reused
    assert await store.get_order("order-2") is None


async def test_order_create_foreign_authorization_writes_nothing(store: TenantStore) -> None:
    await store.create_account(make_account("acct-1", "tp-1"))
    await store.create_account(make_account("acct-2", "tp-2"))
    theirs = make_authorization("authz-theirs", "acct-2", status="valid")
    await store.create_order(make_order("order-2", ("authz-theirs",), "acct-2"), [theirs])
    audit_before = await store.list_audit()

    with pytest.raises(StoreError):
        await store.create_order(
            make_order("order-1", ("authz-new", "authz-theirs")),
            [make_authorization("authz-new")],
            [entry("order.created")],
        )

    assert await store.get_order("order-1") is None
    assert await store.get_authorization("authz-new") is None
    assert await store.get_challenge("authz-new-http-01") is None
    assert await store.list_audit() == audit_before


async def test_order_update_persists(store: TenantStore) -> None:
    order = await ready_order(store)
    failed = replace(order, status="invalid", error={"type": "x", "detail": "d"}, replaces="r")

    await store.update_order(failed)

    assert await store.get_order(order.id) == failed


async def test_order_list_ids_newest_first_with_paging(store: TenantStore) -> None:
    await store.create_account(make_account("acct-1", "tp-1"))
    await store.create_account(make_account("acct-2", "tp-2"))
    for i, created in enumerate([NOW - 2 * DAY, NOW, NOW - DAY, NOW]):
        authorization = make_authorization(f"authz-{i}")
        order = make_order(f"order-{i}", (authorization.id,), created=created)
        await store.create_order(order, [authorization])

    assert await store.list_order_ids("acct-1", 10, 0) == [
        "order-3",
        "order-1",
        "order-2",
        "order-0",
    ]
    assert await store.list_order_ids("acct-1", 2, 1) == ["order-1", "order-2"]
    assert await store.list_order_ids("acct-2", 10, 0) == []


async def test_challenge_get_round_trips(store: TenantStore) -> None:
    await ready_order(store)

    challenge = await store.get_challenge("authz-order-1-dns-01")

    assert challenge == Challenge(
        "authz-order-1-dns-01", "authz-order-1", "dns-01", "token-dns-01", "pending"
    )
    assert await store.get_challenge("nope") is None


async def test_authorization_create_outside_order_round_trips(store: TenantStore) -> None:
    await store.create_account(make_account())
    authorization = make_authorization("pre-authz", value="pre.example.com")

    await store.create_authorization(authorization, [entry("authorization.created")])

    assert await store.get_authorization("pre-authz") == authorization
    assert await audit_events(store) == ["authorization.created"]
    with pytest.raises(Conflict):
        await store.create_authorization(authorization)


async def test_authorization_update_stores_challenge_state(store: TenantStore) -> None:
    await store.create_account(make_account())
    authorization = make_authorization("authz-1")
    await store.create_order(make_order("order-1", ("authz-1",)), [authorization])
    http, dns, alpn = authorization.challenges
    updated = replace(
        authorization,
        status="valid",
        expires=NOW + 30 * DAY,
        challenges=(
            replace(http, status="valid", validated=NOW),
            replace(dns, status="invalid", error={"type": "urn:x", "detail": "no TXT"}),
            alpn,
        ),
    )

    await store.update_authorization(updated, [entry("authorization.valid")])

    assert await store.get_authorization("authz-1") == updated
    with pytest.raises(StoreError):
        await store.update_authorization(replace(updated, id="authz-unknown", challenges=()))


async def test_find_reusable_authorization_picks_newest_valid_match(store: TenantStore) -> None:
    await store.create_account(make_account("acct-1", "tp-1"))
    await store.create_account(make_account("acct-2", "tp-2"))
    candidates = [
        make_authorization("old", status="valid", created=NOW - DAY),
        make_authorization("new", status="valid", created=NOW),
        make_authorization("pending", status="pending", created=NOW + DAY),
        make_authorization("expired", status="valid", expires=NOW - DAY, created=NOW + DAY),
        make_authorization("wild", status="valid", wildcard=True, created=NOW + DAY),
        make_authorization("other-name", value="other.example", status="valid"),
    ]
    await store.create_order(make_order("o1", tuple(a.id for a in candidates)), candidates)
    theirs = make_authorization("theirs", "acct-2", status="valid", created=NOW + DAY)
    await store.create_order(make_order("o2", ("theirs",), "acct-2"), [theirs])
    name = Identifier("dns", "example.com")

    found = await store.find_reusable_authorization("acct-1", name, False, NOW)
    wildcard = await store.find_reusable_authorization("acct-1", name, True, NOW)
    later = await store.find_reusable_authorization("acct-1", name, False, NOW + 8 * DAY)
    other_type = await store.find_reusable_authorization(
        "acct-1", Identifier("ip", "example.com"), False, NOW
    )

    assert found == candidates[1]
    assert wildcard == candidates[4]
    assert later is None
    assert other_type is None


# Issuance and revocation.


async def test_begin_issuance_ready_order_records_pending_serial(store: TenantStore) -> None:
    order = await ready_order(store)

    began = await store.begin_issuance(
        replace(order, status="processing"), make_certificate("0a1b"), [entry("issuance.begin")]
    )

    assert began is True
    stored = await store.get_order(order.id)
    assert stored is not None and (stored.status, stored.certificate_serial) == (
        "processing",
        "0a1b",
    )
    assert await store.get_certificate("0a1b") == make_certificate("0a1b")
    assert await audit_events(store) == ["issuance.begin"]


async def test_begin_issuance_not_ready_order_changes_nothing(store: TenantStore) -> None:
    order = await ready_order(store)
    await store.begin_issuance(order, make_certificate("01"))
    pending = make_order("order-2", ("authz-order-1",))
    await store.create_order(pending, [])

    again = await store.begin_issuance(order, make_certificate("02"), [entry("issuance.begin")])
    not_ready = await store.begin_issuance(pending, make_certificate("03"), [entry("x")])

    assert (again, not_ready) == (False, False)
    assert await store.get_certificate("02") is None
    assert await store.get_certificate("03") is None
    assert await store.get_order("order-2") == pending
    assert await store.list_audit() == []


async def test_begin_issuance_from_pending_takes_an_order_still_pending(
    store: TenantStore,
) -> None:
    order = await ready_order(store)
    pending = make_order("order-2", ("authz-order-1",))
    await store.create_order(pending, [])
    processing = replace(pending, status="processing")

    began = await store.begin_issuance(processing, make_certificate("02"), from_status="pending")
    again = await store.begin_issuance(processing, make_certificate("03"), from_status="pending")
    ready_as_pending = await store.begin_issuance(
        replace(order, status="processing"), make_certificate("04"), from_status="pending"
    )

    assert (began, again, ready_as_pending) == (True, False, False)
    stored = await store.get_order("order-2")
    assert stored is not None and (stored.status, stored.certificate_serial) == ("processing", "02")
    assert await store.get_certificate("03") is None
    assert await store.get_certificate("04") is None
    with pytest.raises(ValueError):
        await store.begin_issuance(processing, make_certificate("05"), from_status="valid")


async def test_complete_issuance_stores_der_and_final_order(store: TenantStore) -> None:
    order = await ready_order(store)
    await store.begin_issuance(order, make_certificate("0abc"))
    signed = replace(make_certificate("0abc"), der=b"\x30\x82der", not_before=NOW - DAY)
    final = replace(order, status="valid", certificate_serial="0abc")

    await store.complete_issuance(final, signed, [entry("issuance.signed")])

    assert await store.get_certificate("0abc") == replace(signed, status="valid")
    assert await store.get_order(order.id) == final


async def test_abandon_issuance_puts_order_back(store: TenantStore) -> None:
    order = await ready_order(store)
    await store.begin_issuance(order, make_certificate("0abc"))

    await store.abandon_issuance(order, "0abc", [entry("issuance.failed")])

    assert await store.get_order(order.id) == order
    certificate = await store.get_certificate("0abc")
    assert certificate is not None and certificate.status == "abandoned"
    assert await store.begin_issuance(order, make_certificate("0abd")) is True


async def test_recover_after_crash_abandons_serial_and_readies_order(
    backend: StoreBackend, second_backend: StoreBackend, store: TenantStore
) -> None:
    order = await ready_order(store, "order-1")
    done = await ready_order(store, "order-2")
    await store.begin_issuance(order, make_certificate("01", "order-1"))
    await store.begin_issuance(done, make_certificate("02", "order-2"))
    await store.complete_issuance(
        replace(done, status="valid", certificate_serial="02"),
        replace(make_certificate("02", "order-2"), der=b"der"),
    )
    await backend.close()  # the process dies between begin and complete

    restarted = await second_backend.open_tenant_store("tenant-1", "alpha")
    recovered = await restarted.recover_interrupted_issuance()

    assert recovered == 1
    assert await restarted.get_order("order-1") == order
    interrupted = await restarted.get_certificate("01")
    assert interrupted is not None and interrupted.status == "abandoned"
    finished = await restarted.get_order("order-2")
    assert finished is not None and finished.status == "valid"
    assert await restarted.recover_interrupted_issuance() == 0
    assert verify_chain(await restarted.list_audit()) is None


async def test_recovery_keeps_the_pending_serial_of_a_living_process(
    backend: StoreBackend, second_backend: StoreBackend, store: TenantStore
) -> None:
    order = await ready_order(store, "order-1")
    await store.begin_issuance(order, make_certificate("01", "order-1"))
    starting = await second_backend.open_tenant_store("tenant-1", "alpha")

    while_alive = await starting.recover_interrupted_issuance()
    still_pending = await starting.get_certificate("01")
    await backend.close()  # the process signing it dies with the serial pending
    after_death = await starting.recover_interrupted_issuance()

    assert (while_alive, after_death) == (0, 1)
    assert still_pending is not None and still_pending.status == "pending"
    assert await starting.get_order("order-1") == order
    interrupted = await starting.get_certificate("01")
    assert interrupted is not None and interrupted.status == "abandoned"
    assert verify_chain(await starting.list_audit()) is None


async def test_insert_certificate_without_order_completes(store: TenantStore) -> None:
    await store.create_account(make_account())
    est = make_certificate("0e57", None)

    await store.insert_certificate(est, [entry("est.enroll")])
    pending = await store.get_certificate("0e57")
    await store.complete_issuance(None, replace(est, der=b"der"))

    assert pending == est
    assert await store.get_certificate("0e57") == replace(est, der=b"der", status="valid")
    with pytest.raises(Conflict):
        await store.insert_certificate(est)


async def test_revoke_certificate_second_time_returns_false(store: TenantStore) -> None:
    await store.create_account(make_account())
    await store.insert_certificate(make_certificate("0f", None))
    await store.insert_certificate(make_certificate("10", None))
    await store.complete_issuance(None, replace(make_certificate("0f", None), der=b"d"))

    first = await store.revoke_certificate("0f", 1, NOW, [entry("revoked")])
    second = await store.revoke_certificate("0f", 4, NOW + DAY, [entry("revoked")])
    pending = await store.revoke_certificate("10", 1, NOW, [entry("revoked")])

    assert (first, second, pending) == (True, False, False)
    revoked = await store.get_certificate("0f")
    assert revoked is not None
    assert (revoked.status, revoked.revoked_at, revoked.revocation_reason) == ("revoked", NOW, 1)
    assert await audit_events(store) == ["revoked"]


async def test_complete_issuance_unrecorded_or_revoked_serial_raises(store: TenantStore) -> None:
    await store.create_account(make_account())
    certificate = make_certificate("0f", None)
    await store.insert_certificate(certificate)
    await store.complete_issuance(None, replace(certificate, der=b"d"))
    await store.revoke_certificate("0f", 1, NOW)

    with pytest.raises(StoreError):
        await store.complete_issuance(None, replace(certificate, der=b"again"))
    with pytest.raises(StoreError):
        await store.complete_issuance(None, replace(make_certificate("77", None), der=b"d"))

    revoked = await store.get_certificate("0f")
    assert revoked is not None and (revoked.status, revoked.der) == ("revoked", b"d")


async def test_insert_certificate_stores_lowercase_pending(store: TenantStore) -> None:
    await store.create_account(make_account())

    await store.insert_certificate(replace(make_certificate("00AB", None), status="valid"))

    assert await store.get_certificate("00ab") == make_certificate("00ab", None)
    assert await store.get_certificate("00Ab") == make_certificate("00ab", None)


async def test_list_revoked_filters_shard_and_expiry(store: TenantStore) -> None:
    await store.create_account(make_account())
    certificates = [
        make_certificate("01", None, shard=0),
        make_certificate("02", None, shard=1),
        make_certificate("03", None, shard=1, not_after=NOW - timedelta(seconds=5)),
        make_certificate("04", None, shard=1),
    ]
    for certificate in certificates:
        await store.insert_certificate(certificate)
        await store.complete_issuance(None, replace(certificate, der=b"d"))
    for serial in ("01", "02", "03"):
        await store.revoke_certificate(serial, 0, NOW)

    shard_1 = await store.list_revoked_certificates(1)
    every = await store.list_revoked_certificates(None)

    assert [c.serial for c in shard_1] == ["02"]
    assert [c.serial for c in every] == ["01", "02"]
    assert shard_1[0].revoked_at == NOW and shard_1[0].status == "revoked"


# Shared OCSP responses and job leases.


def make_response(
    serial: str, signed: datetime, *, revoked: bool = False, der: bytes = b"r"
) -> OcspResponseRecord:
    return OcspResponseRecord(
        serial=serial,
        der=der,
        this_update=signed,
        next_update=signed + DAY,
        not_after=signed + 30 * DAY,
        revoked=revoked,
    )


async def test_ocsp_responses_round_trip_and_list_what_changed(store: TenantStore) -> None:
    before = utcnow() - timedelta(seconds=1)
    signed = NOW.replace(microsecond=0)
    await store.save_ocsp_responses([make_response("0A", signed, der=b"first")])
    await asyncio.sleep(0.01)
    await store.save_ocsp_responses([make_response("0b", signed, der=b"second")])

    every = await store.list_ocsp_responses(before, 10)
    assert [(r.serial, r.der) for r in every] == [("0a", b"first"), ("0b", b"second")]
    assert every[1].stored_at is not None
    later = await store.list_ocsp_responses(every[1].stored_at, 10)
    assert [r.serial for r in later] == ["0b"]
    first = every[0]
    assert first.this_update == signed and first.next_update == signed + DAY
    assert first.not_after == signed + 30 * DAY and first.revoked is False
    assert first.stored_at is not None and first.stored_at.tzinfo is not None
    assert [r.serial for r in await store.list_ocsp_responses(before, 1)] == ["0a"]
    expired = replace(make_response("0c", signed - 40 * DAY), not_after=utcnow() - DAY)
    await store.save_ocsp_responses([expired])
    assert [r.serial for r in await store.list_ocsp_responses(before, 10)] == ["0a", "0b"]


async def test_ocsp_response_of_one_serial_is_read_alone(
    store: TenantStore, second_backend: StoreBackend
) -> None:
    signed = NOW.replace(microsecond=0)
    await store.save_ocsp_responses([make_response("0A", signed, der=b"first")])
    await store.save_ocsp_responses([make_response("0b", signed, der=b"second")])
    expired = replace(make_response("0c", signed - 40 * DAY), not_after=utcnow() - DAY)
    await store.save_ocsp_responses([expired])
    other = await second_backend.open_tenant_store("tenant-1", "alpha")

    found = await other.get_ocsp_response("0a")

    assert found is not None and (found.serial, found.der) == ("0a", b"first")
    assert found.stored_at is not None and found.this_update == signed
    assert (await store.get_ocsp_response("0B")) is not None
    assert await store.get_ocsp_response("0c") is None
    assert await store.get_ocsp_response("0d") is None


async def test_ocsp_response_never_goes_back_in_time_or_from_revoked_to_good(
    store: TenantStore,
) -> None:
    before = utcnow() - timedelta(seconds=1)
    signed = NOW.replace(microsecond=0)
    await store.save_ocsp_responses([make_response("01", signed, der=b"good")])
    await store.save_ocsp_responses([make_response("01", signed - DAY, der=b"older")])
    assert [r.der for r in await store.list_ocsp_responses(before, 10)] == [b"good"]

    await store.save_ocsp_responses([make_response("01", signed, revoked=True, der=b"revoked")])
    later = signed + timedelta(hours=1)
    await store.save_ocsp_responses([make_response("01", later, der=b"good again")])

    [kept] = await store.list_ocsp_responses(before, 10)
    assert kept.der == b"revoked" and kept.revoked is True


async def test_job_lease_has_one_holder_until_it_runs_out(store: TenantStore) -> None:
    now = NOW
    minute = timedelta(minutes=1)

    assert await store.claim_job("refresh", "replica-a", now, now + minute)
    assert not await store.claim_job("refresh", "replica-b", now + minute / 2, now + 2 * minute)
    assert await store.claim_job("refresh", "replica-a", now + minute / 2, now + 2 * minute)
    assert not await store.claim_job("refresh", "replica-b", now + minute, now + 3 * minute)
    assert await store.claim_job("refresh", "replica-b", now + 2 * minute, now + 3 * minute)
    assert await store.claim_job("other", "replica-a", now + 2 * minute, now + 3 * minute)


# The audit chain.


async def test_audit_chain_links_every_write(store: TenantStore) -> None:
    await store.append_audit([entry("first", n=1), entry("second", when=NOW)])
    await store.create_account(make_account(), [entry("account.created", ids=("a", "b"))])

    records = await store.list_audit()

    assert [(r.seq, r.event) for r in records] == [
        (1, "first"),
        (2, "second"),
        (3, "account.created"),
    ]
    assert records[0].prev_hash == GENESIS_HASH
    assert records[2].data == {"ids": ["a", "b"]} and records[2].actor == "server"
    assert records[0].time.utcoffset() == timedelta(0)
    assert verify_chain(records) is None


async def test_audit_chain_edited_row_breaks_there(
    store: TenantStore, tamper: Callable[[str, int, str], None]
) -> None:
    await store.append_audit([entry("a", n=1), entry("b", n=2), entry("c", n=3)])

    tamper("alpha", 2, '{"n":20}')

    assert verify_chain(await store.list_audit()) == 2


async def test_audit_list_pages_by_sequence(store: TenantStore) -> None:
    await store.append_audit([entry(f"e{i}") for i in range(1, 6)])

    page = await store.list_audit(after_seq=2, limit=2)

    assert [r.seq for r in page] == [3, 4]
    assert await store.list_audit(after_seq=5) == []


async def test_audit_from_two_processes_forms_one_chain(
    store: TenantStore, second_backend: StoreBackend
) -> None:
    other = await second_backend.open_tenant_store("tenant-1", "alpha")

    await asyncio.gather(
        *((store if i % 2 else other).append_audit([entry(f"e{i}")]) for i in range(20))
    )

    records = await store.list_audit()
    assert len(records) == 20
    assert verify_chain(records) is None


# Isolation and visibility.


async def test_tenant_stores_with_same_ids_stay_apart(backend: StoreBackend) -> None:
    alpha = await backend.create_tenant_store("tenant-1", "alpha")
    beta = await backend.create_tenant_store("tenant-2", "beta")
    alpha_account = make_account()
    beta_account = replace(make_account(), contact=("mailto:beta@example.com",))

    await alpha.create_account(alpha_account, [entry("alpha.only")])
    await beta.create_account(beta_account)
    await alpha.create_order(make_order("order-1", ("authz-1",)), [make_authorization("authz-1")])
    await alpha.insert_certificate(make_certificate("01", "order-1"))

    assert await alpha.get_account("acct-1") == alpha_account
    assert await beta.get_account("acct-1") == beta_account
    assert await beta.get_order("order-1") is None
    assert await beta.get_authorization("authz-1") is None
    assert await beta.get_certificate("01") is None
    assert await beta.list_order_ids("acct-1", 10, 0) == []
    assert await beta.list_audit() == []


async def test_reads_see_rows_written_by_another_process(
    backend: StoreBackend, second_backend: StoreBackend, store: TenantStore
) -> None:
    registry = await backend.open_registry()
    assert await store.get_eab_key("kid-cli") is None
    assert await registry.get_tenant("beta") is None

    cli_store = await second_backend.open_tenant_store("tenant-1", "alpha")
    await cli_store.create_eab_key(EabKey("kid-cli", b"k", NOW), [entry("eab.created")])
    await (await second_backend.open_registry()).create_tenant(make_tenant("beta"))

    assert await store.get_eab_key("kid-cli") == EabKey("kid-cli", b"k", NOW)
    assert await registry.get_tenant("beta") == make_tenant("beta")
    bound = await store.create_account(make_account(eab_kid="kid-cli"))
    assert bound.eab_kid == "kid-cli"


# The SQLite files themselves.


async def test_sqlite_write_waits_out_another_process_lock(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    store = await backend.create_tenant_store("tenant-1", "alpha")
    other = sqlite3.connect(tmp_path / "tenants" / "alpha" / TENANT_FILE, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO eab_keys (kid, hmac_key, created) VALUES ('cli', x'00', 0)")

    write = asyncio.ensure_future(store.append_audit([entry("after.lock")]))
    await asyncio.sleep(0.3)
    assert not write.done()
    other.execute("COMMIT")
    other.close()
    await write

    assert await audit_events(store) == ["after.lock"]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert await store.get_eab_key("cli") == EabKey("cli", b"\x00", epoch)
    await backend.close()


def test_sqlite_migrations_apply_once(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "t.sqlite3", isolation_level=None)

    first = apply_sqlite_migrations(conn, "tenant")
    second = apply_sqlite_migrations(conn, "tenant")

    assert first[0] == 1 and first == sorted(first) and second == []
    recorded = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [(v,) for v in first]
    conn.close()


def test_sqlite_statement_split_respects_quotes_and_comments() -> None:
    script = "-- a; comment\nCREATE TABLE a (x TEXT DEFAULT ';');\n\nINSERT INTO a VALUES ('b;');\n"

    assert split_sqlite_statements(script) == [
        "-- a; comment\nCREATE TABLE a (x TEXT DEFAULT ';');",
        "INSERT INTO a VALUES ('b;');",
    ]
