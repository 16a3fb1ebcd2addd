"""The PostgreSQL back end beyond the shared contract: migrations, replicas, dedicated tenants."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from acme_mt.audit import verify_chain
from acme_mt.config import StoreSettings
from acme_mt.errors import Conflict
from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    CertificateRecord,
    EabKey,
    EabPolicy,
    Identifier,
    Order,
    VerifiedDomain,
    utcnow,
)
from acme_mt.storage.base import EstCredential, OcspSignerRecord
from acme_mt.storage.migrate import load_migrations
from acme_mt.storage.postgres import PostgresBackend
from tests.support.live import REPO
from tests.support.postgres import PostgresCluster, with_database

NOW = utcnow()
DAY = timedelta(days=1)


@dataclass
class Database:
    """A fresh database and how to open back ends (replicas) on it."""

    dsn: str
    cluster: PostgresCluster
    data_dir: Path
    secrets_file: Path

    def backend(self) -> PostgresBackend:
        settings = StoreSettings(
            backend="postgres", dsn=self.dsn, secrets_file=str(self.secrets_file)
        )
        return PostgresBackend(settings, self.data_dir)


@pytest.fixture
async def database(postgres_cluster: PostgresCluster, tmp_path: Path) -> Database:
    return Database(
        postgres_cluster.fresh_database("store"),
        postgres_cluster,
        tmp_path,
        postgres_cluster.secrets_file,
    )


@pytest.fixture
async def replicas(database: Database) -> AsyncIterator[tuple[PostgresBackend, PostgresBackend]]:
    first, second = database.backend(), database.backend()
    yield first, second
    await first.close()
    await second.close()


def account(account_id: str, thumbprint: str, eab_kid: str | None = None) -> Account:
    return Account(account_id, {"kty": "EC"}, thumbprint, "valid", (), NOW, eab_kid)


def ready_order(order_id: str) -> tuple[Order, Authorization]:
    authorization = Authorization(
        f"authz-{order_id}", "acct-1", Identifier("dns", "a.example"), "valid", NOW + DAY, False
    )
    order = Order(
        order_id,
        "acct-1",
        "ready",
        (authorization.identifier,),
        (authorization.id,),
        NOW + DAY,
        NOW,
    )
    return order, authorization


def pending(serial: str, order_id: str | None) -> CertificateRecord:
    return CertificateRecord(serial, "acct-1", order_id, "pending", NOW, NOW + DAY, NOW)


async def superuser_fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


# Migrations.


async def test_migrate_from_two_processes_at_once_applies_each_version_once(
    database: Database, replicas: tuple[PostgresBackend, PostgresBackend]
) -> None:
    first, second = replicas
    await first.create_tenant_store("t1", "alpha")

    reports = await asyncio.gather(first.migrate(), second.migrate())
    again = await first.migrate()

    assert all(report["tenants"] == {"alpha": []} for report in (*reports, again))
    versions = [m.version for m in load_migrations("postgres", "tenant")]
    rows = await superuser_fetch(
        database.dsn, "SELECT version FROM tenant_t1.schema_migrations ORDER BY version"
    )
    assert [row["version"] for row in rows] == versions


def test_cli_db_migrate_is_safe_to_run_twice(database: Database) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACME_MT_")}
    env.update(
        ACME_MT_STORE_BACKEND="postgres",
        ACME_MT_STORE_DSN=database.dsn,
        ACME_MT_STORE_SECRETS_FILE=str(database.secrets_file),
    )
    command = [sys.executable, "-m", "acme_mt", "db", "migrate", "--json"]
    command += ["--data-dir", str(database.data_dir)]

    runs = [
        subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        for _ in range(2)
    ]

    assert [run.returncode for run in runs] == [0, 0], runs[-1].stderr
    assert json.loads(runs[1].stdout) == {
        "backend": "postgres",
        "registry": [],
        "functions": [],
        "tenants": {},
    }
    assert database.dsn.split("@")[0].split(":")[-1] not in runs[0].stdout + runs[0].stderr


# State that replicas share.


async def test_nonce_is_single_use_across_replicas_and_tenants(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    first, second = replicas
    await first.create_tenant_store("t1", "alpha")
    await first.create_tenant_store("t2", "beta")
    nonce = await first.nonce_service("t1").issue()
    other = await first.nonce_service("t1").issue()

    at_beta = await second.nonce_service("t2").redeem(other)
    redeemed = await asyncio.gather(
        second.nonce_service("t1").redeem(nonce), first.nonce_service("t1").redeem(nonce)
    )

    assert sorted(redeemed) == [False, True]
    assert at_beta is False
    assert await second.nonce_service("t1").redeem(other) is True
    assert await first.nonce_service("t1").redeem("not-a-nonce'; DROP TABLE nonces; --") is False


async def test_a_kid_requests_nonce_is_spent_with_its_account_read(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    first, second = replicas
    alpha = await first.create_tenant_store("t1", "alpha")
    await first.create_tenant_store("t2", "beta")
    await alpha.create_account(account("acct-1", "tp-1"))
    nonces = first.nonce_service("t1")
    nonce, unknown_nonce, other = await nonces.issue(), await nonces.issue(), await nonces.issue()
    beta_nonce = await first.nonce_service("t2").issue()

    redeemed = await asyncio.gather(
        nonces.redeem_for_account(nonce, "acct-1"),
        second.nonce_service("t1").redeem_for_account(nonce, "acct-1"),
    )
    for_unknown = await nonces.redeem_for_account(unknown_nonce, "acct-9")
    with_beta_nonce = await nonces.redeem_for_account(beta_nonce, "acct-1")
    at_beta = await second.nonce_service("t2").redeem_for_account(other, "acct-1")
    forged = await nonces.redeem_for_account("x" * 40, "acct-1")

    assert sorted(fresh for _, fresh in redeemed) == [False, True]
    assert all(found == account("acct-1", "tp-1") for found, _ in redeemed)
    assert for_unknown == (None, True)
    assert with_beta_nonce == (account("acct-1", "tp-1"), False)
    assert at_beta == (None, False)
    assert forged == (account("acct-1", "tp-1"), False)
    # Spent through either path, a nonce is gone for the other.
    assert await nonces.redeem(unknown_nonce) is False
    assert await first.nonce_service("t2").redeem(beta_nonce) is True
    assert await nonces.redeem(other) is True


async def test_recovery_keeps_a_live_replicas_pending_serial(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    first, second = replicas
    store = await first.create_tenant_store("t1", "alpha")
    await store.create_account(account("acct-1", "tp-1"))
    order, authorization = ready_order("order-1")
    await store.create_order(order, [authorization])
    await store.begin_issuance(replace(order, status="processing"), pending("01", "order-1"))
    starting = await second.open_tenant_store("t1", "alpha")

    while_alive = await starting.recover_interrupted_issuance()
    await first.close()  # the first replica dies with the serial pending
    after_death = await starting.recover_interrupted_issuance()

    assert (while_alive, after_death) == (0, 1)
    assert await starting.get_order("order-1") == order
    interrupted = await starting.get_certificate("01")
    assert interrupted is not None and interrupted.status == "abandoned"


async def test_replicas_writing_in_turn_keep_one_audit_chain(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    first, second = replicas
    one = await first.create_tenant_store("t1", "alpha")
    other = await second.open_tenant_store("t1", "alpha")
    await one.create_account(account("acct-1", "tp-1"))
    order, authorization = ready_order("order-1")

    # Each replica's last known head is stale whenever the other wrote in between.
    await one.create_order(order, [authorization], [AuditEntry("order.created", {})])
    await other.update_order(replace(order, status="invalid"), [AuditEntry("order.a", {})])
    await one.update_order(order, [AuditEntry("order.b", {})])
    await one.append_audit([AuditEntry("one.again", {})])
    revoked = await other.revoke_certificate("77", 1, NOW, [AuditEntry("never", {})])
    await other.append_audit([AuditEntry("other.again", {"n": 1})])

    records = await one.list_audit()
    assert revoked is False
    assert [(r.seq, r.event) for r in records] == [
        (1, "order.created"),
        (2, "order.a"),
        (3, "order.b"),
        (4, "one.again"),
        (5, "other.again"),
    ]
    assert verify_chain(records) is None
    assert await other.get_order("order-1") == order


async def test_concurrent_writes_of_one_tenant_chain_in_turn(database: Database) -> None:
    backend = database.backend()
    store = await backend.create_tenant_store("t1", "alpha")
    await store.create_account(account("acct-1", "tp-1"))
    orders = [ready_order(f"order-{i}") for i in range(12)]

    await asyncio.gather(
        *(
            store.create_order(order, [authorization], [AuditEntry("order.created", {"i": i})])
            for i, (order, authorization) in enumerate(orders)
        )
    )

    records = await store.list_audit()
    await backend.close()
    assert [r.seq for r in records] == list(range(1, 13))
    assert sorted(r.data["i"] for r in records) == list(range(12))
    assert verify_chain(records) is None


async def test_connection_left_inside_a_transaction_is_not_lent_again(
    database: Database,
) -> None:
    backend = database.backend()
    await backend.create_tenant_store("t1", "alpha")
    connections = (await backend.binding("t1")).pool
    conn = await connections.acquire()
    await conn.execute("BEGIN; SELECT set_config('acme_mt.tenant_id', 't1', true)")
    connections.release(conn)

    again = await connections.acquire()
    state = (again is conn, again.is_in_transaction())
    setting = await again.fetchval("SELECT current_setting('acme_mt.tenant_id', true)")
    connections.release(again)
    await backend.close()
    assert state == (False, False)
    assert setting in (None, "")


async def test_many_tenant_stores_share_the_backends_pools(database: Database) -> None:
    backend = database.backend()
    for i in range(20):
        await backend.create_tenant_store(f"t{i}", f"tenant-{i}")
    stores = [await backend.open_tenant_store(f"t{i}", f"tenant-{i}") for i in range(20)]

    await asyncio.gather(*(s.append_audit([]) for s in stores))
    await asyncio.gather(*(s.list_audit() for s in stores))

    homes = {id((await backend.binding(f"t{i}")).pool) for i in range(20)}
    connections = await superuser_fetch(
        database.dsn,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE usename = 'acme_mt_app'"
        " AND datname = current_database()",
    )
    await backend.close()
    assert 1 < len(homes) <= StoreSettings().pool_max // 2
    assert connections[0]["n"] <= StoreSettings().pool_max


# The dedicated model.


async def test_dedicated_tenant_lives_in_its_own_database(database: Database) -> None:
    dedicated = f"dedicated_{os.getpid()}_{id(database) % 10_000}"
    conn = await asyncpg.connect(database.dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{dedicated}" OWNER acme_mt_owner')
    finally:
        await conn.close()
    secrets = json.loads(database.secrets_file.read_text())
    secrets["dedicated"] = {"bigcorp": with_database(database.dsn, dedicated)}
    own_secrets = database.data_dir / "store-secrets.json"
    own_secrets.write_text(json.dumps(secrets))
    database.secrets_file = own_secrets
    backend = database.backend()
    try:
        store = await backend.create_tenant_store("big1", "bigcorp")
        shared = await backend.create_tenant_store("small1", "smallco")
        await store.create_account(account("acct-1", "tp-big"))
        await shared.create_account(account("acct-1", "tp-small"))
        nonce = await backend.nonce_service("big1").issue()
        reopened = await database.backend().open_tenant_store("big1", "bigcorp")
        seen = await reopened.get_account("acct-1")
        redeemed = await database.backend().nonce_service("big1").redeem(nonce)
    finally:
        await backend.close()

    in_dedicated = await superuser_fetch(
        with_database(database.dsn, dedicated), "SELECT thumbprint FROM tenant_big1.accounts"
    )
    in_shared = await superuser_fetch(
        database.dsn,
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_%' ORDER BY nspname",
    )
    catalogue = await superuser_fetch(
        database.dsn, "SELECT slug, database_dsn FROM acme_mt.tenant_stores ORDER BY slug"
    )
    assert seen == account("acct-1", "tp-big")
    assert redeemed is True
    assert [row["thumbprint"] for row in in_dedicated] == ["tp-big"]
    assert [row["nspname"] for row in in_shared] == ["tenant_small1"]
    assert [(row["slug"], row["database_dsn"] is not None) for row in catalogue] == [
        ("bigcorp", True),
        ("smallco", False),
    ]
    assert "@" not in catalogue[0]["database_dsn"]


# Contract methods the shared suite does not cover yet.


async def test_eab_key_policy_binds_several_accounts_until_revoked(database: Database) -> None:
    backend = database.backend()
    store = await backend.create_tenant_store("t1", "alpha")
    policy = EabPolicy(allowed_suffixes=("example.com",), max_accounts=2)
    await store.create_eab_key(EabKey("kid-1", b"k", NOW, policy=policy))

    await store.create_account(account("acct-1", "tp-1", "kid-1"))
    await store.create_account(account("acct-2", "tp-2", "kid-1"))
    with pytest.raises(Conflict):
        await store.create_account(account("acct-3", "tp-3", "kid-1"))
    await store.create_eab_key(EabKey("kid-2", b"k", NOW))
    revoked = [await store.revoke_eab_key("kid-2"), await store.revoke_eab_key("kid-2")]
    with pytest.raises(Conflict):
        await store.create_account(account("acct-4", "tp-4", "kid-2"))

    keys = await store.list_eab_keys()
    await backend.close()
    assert revoked == [True, False]
    assert [(k.kid, k.account_id, k.revoked, k.policy) for k in keys] == [
        ("kid-1", "acct-1", False, policy),
        ("kid-2", None, True, EabPolicy()),
    ]


async def test_credentials_domains_signers_and_replacing_orders(database: Database) -> None:
    backend = database.backend()
    store = await backend.create_tenant_store("t1", "alpha")
    await store.create_account(account("acct-1", "tp-1"))
    credential = EstCredential("cred-1", "device", "scrypt$hash", NOW)
    await store.create_est_credential(credential)
    with pytest.raises(Conflict):
        await store.create_est_credential(replace(credential, id="cred-2"))
    revoked = [await store.revoke_est_credential("cred-1", NOW) for _ in range(2)]
    await store.save_domain(VerifiedDomain("example.org", "tok", NOW))
    await store.save_domain(VerifiedDomain("example.org", "tok", NOW, verified=NOW))
    signer = OcspSignerRecord("ocsp-1", b"\x30der", NOW + DAY, NOW)
    await store.save_ocsp_signer(signer)
    order, authorization = ready_order("order-1")
    await store.create_order(replace(order, replaces="aki.serial"), [authorization])
    await store.insert_certificate(pending("0b", None))
    await store.complete_issuance(None, replace(pending("0b", None), der=b"d"))

    assert revoked == [True, False]
    assert await store.get_est_credential("device") == replace(credential, revoked_at=NOW)
    assert await store.get_ocsp_signer() == signer
    assert await store.list_domains() == [VerifiedDomain("example.org", "tok", NOW, NOW)]
    replacing = await store.find_order_replacing("aki.serial")
    assert replacing is not None and replacing.id == "order-1"
    listed = await store.list_certificates("", 10)
    assert [(c.serial, c.status, c.der) for c in listed] == [("0b", "valid", None)]
    await backend.close()
