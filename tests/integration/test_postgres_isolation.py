"""Tenant isolation in PostgreSQL itself: row-level security seen through the application role.

Each test works on a database of its own with two tenants, ``alpha`` and
``beta``, holding rows with the same ids. The checks talk raw SQL as
``acme_mt_app`` (the role the server serves as), with no tenant filter in the
WHERE clause, so they show what a query that forgets its filter would see.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from acme_mt.config import StoreSettings
from acme_mt.errors import ConfigError
from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    CertificateRecord,
    Challenge,
    Identifier,
    Order,
    utcnow,
)
from acme_mt.storage.base import OcspResponseRecord
from acme_mt.storage.postgres import PostgresBackend
from acme_mt.storage.postgres_roles import APP_ROLE, OWNER_ROLE
from acme_mt.storage.postgres_tenant import PostgresTenantStore
from tests.support.postgres import PostgresCluster

NOW = utcnow()
DAY = timedelta(days=1)


@dataclass
class TwoTenants:
    dsn: str
    cluster: PostgresCluster
    backend: PostgresBackend
    alpha: PostgresTenantStore
    beta: PostgresTenantStore

    async def app_connection(self) -> asyncpg.Connection:
        """A raw connection as the application role, with no tenant context yet."""
        stored = json.loads(self.cluster.secrets_file.read_text())
        return await asyncpg.connect(self.dsn, user=APP_ROLE, password=stored["app_password"])


def account(thumbprint: str, contact: str) -> Account:
    return Account("acct-1", {"kty": "EC"}, thumbprint, "valid", (contact,), NOW)


@pytest.fixture
async def tenants(postgres_cluster: PostgresCluster, tmp_path: Path) -> AsyncIterator[TwoTenants]:
    dsn = postgres_cluster.fresh_database("isolation")
    settings = StoreSettings(
        backend="postgres", dsn=dsn, secrets_file=str(postgres_cluster.secrets_file)
    )
    backend = PostgresBackend(settings, tmp_path)
    alpha = await backend.create_tenant_store("alpha-id", "alpha")
    beta = await backend.create_tenant_store("beta-id", "beta")
    for store, name in ((alpha, "alpha"), (beta, "beta")):
        await store.create_account(
            account(f"tp-{name}", f"mailto:{name}@example.com"), [AuditEntry(name, {})]
        )
        await store.insert_certificate(
            CertificateRecord("0a", "acct-1", None, "pending", NOW, NOW + timedelta(days=1), NOW)
        )
    yield TwoTenants(dsn, postgres_cluster, backend, alpha, beta)
    await backend.close()


async def in_context(conn: asyncpg.Connection, tenant_id: str) -> None:
    """Open a transaction as the store does: the tenant's id, set locally."""
    await conn.execute("BEGIN")
    await conn.execute("SELECT set_config('acme_mt.tenant_id', $1, true)", tenant_id)


async def test_app_roles_neither_superuser_nor_bypassrls(tenants: TwoTenants) -> None:
    conn = await tenants.app_connection()
    try:
        rows = await conn.fetch(
            "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles"
            " WHERE rolname = ANY($1::text[]) ORDER BY rolname",
            [APP_ROLE, OWNER_ROLE],
        )
        current = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()

    assert current == APP_ROLE
    assert [tuple(row) for row in rows] == [
        (APP_ROLE, False, False, False, False),
        (OWNER_ROLE, False, False, False, False),
    ]


async def test_select_in_alpha_context_sees_nothing_of_beta(tenants: TwoTenants) -> None:
    conn = await tenants.app_connection()
    try:
        await in_context(conn, "alpha-id")
        beta_accounts = await conn.fetch("SELECT id, contact FROM tenant_beta_id.accounts")
        beta_certificates = await conn.fetch("SELECT serial FROM tenant_beta_id.certificates")
        beta_audit = await conn.fetch("SELECT seq FROM tenant_beta_id.audit")
        own = await conn.fetch("SELECT contact FROM tenant_alpha_id.accounts")
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()

    assert (beta_accounts, beta_certificates, beta_audit) == ([], [], [])
    assert [json.loads(row["contact"]) for row in own] == [["mailto:alpha@example.com"]]


async def test_update_and_delete_in_alpha_context_change_nothing_of_beta(
    tenants: TwoTenants,
) -> None:
    beta_nonces = tenants.backend.nonce_service("beta-id")
    beta_nonce = await beta_nonces.issue()
    assert await beta_nonces.redeem(beta_nonce) is True
    conn = await tenants.app_connection()
    try:
        await in_context(conn, "alpha-id")
        updated = await conn.execute("UPDATE tenant_beta_id.accounts SET status = 'revoked'")
        revoked = await conn.execute("UPDATE tenant_beta_id.certificates SET status = 'revoked'")
        deleted = await conn.execute("DELETE FROM tenant_beta_id.nonces")
        await conn.execute("COMMIT")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM tenant_beta_id.accounts")
    finally:
        await conn.close()

    assert (updated, revoked, deleted) == ("UPDATE 0", "UPDATE 0", "DELETE 0")
    beta_account = await tenants.beta.get_account("acct-1")
    assert beta_account == account("tp-beta", "mailto:beta@example.com")
    certificate = await tenants.beta.get_certificate("0a")
    assert certificate is not None and certificate.status == "pending"
    # Its spent row is still there, so the nonce cannot be used a second time.
    assert await tenants.backend.nonce_service("beta-id").redeem(beta_nonce) is False


async def test_insert_into_beta_in_alpha_context_is_refused(tenants: TwoTenants) -> None:
    conn = await tenants.app_connection()
    try:
        await in_context(conn, "alpha-id")
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(
                "INSERT INTO tenant_beta_id.eab_keys (kid, hmac_key, created)"
                " VALUES ('planted', '\\x00', now())"
            )
        await conn.execute("ROLLBACK")
        await in_context(conn, "alpha-id")
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(
                "INSERT INTO tenant_beta_id.eab_keys (tenant_id, kid, hmac_key, created)"
                " VALUES ('beta-id', 'planted', '\\x00', now())"
            )
        await conn.execute("ROLLBACK")
    finally:
        await conn.close()

    assert await tenants.beta.get_eab_key("planted") is None


async def test_alpha_context_neither_sees_nor_takes_betas_ocsp_responses_and_leases(
    tenants: TwoTenants,
) -> None:
    response = OcspResponseRecord("0a", b"beta", NOW, NOW + timedelta(hours=24), NOW + DAY, False)
    await tenants.beta.save_ocsp_responses([response])
    assert await tenants.beta.claim_job("ocsp-refresh", "beta-replica", NOW, NOW + DAY)
    conn = await tenants.app_connection()
    try:
        await in_context(conn, "alpha-id")
        seen = await conn.fetch("SELECT serial FROM tenant_beta_id.ocsp_responses")
        leases = await conn.fetch("SELECT holder FROM tenant_beta_id.job_leases")
        replaced = await conn.execute("UPDATE tenant_beta_id.ocsp_responses SET der = '\\x00'")
        taken = await conn.execute("UPDATE tenant_beta_id.job_leases SET holder = 'alpha'")
        await conn.execute("COMMIT")
    finally:
        await conn.close()

    assert (seen, leases, replaced, taken) == ([], [], "UPDATE 0", "UPDATE 0")
    kept = await tenants.beta.list_ocsp_responses(NOW - DAY, 10)
    assert [r.der for r in kept] == [b"beta"]
    assert await tenants.alpha.get_ocsp_response("0a") is None
    assert await tenants.beta.get_ocsp_response("0a") is not None
    assert not await tenants.beta.claim_job("ocsp-refresh", "alpha", NOW, NOW + DAY)


async def test_without_tenant_context_nothing_is_visible_or_writable(tenants: TwoTenants) -> None:
    conn = await tenants.app_connection()
    try:
        counts = [
            await conn.fetchval(f"SELECT count(*) FROM {schema}.{table}")
            for schema in ("tenant_alpha_id", "tenant_beta_id")
            for table in ("accounts", "certificates", "audit", "audit_head")
        ]
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute(
                "INSERT INTO tenant_alpha_id.eab_keys (kid, hmac_key, created)"
                " VALUES ('planted', '\\x00', now())"
            )
    finally:
        await conn.close()

    assert counts == [0] * 8
    assert await tenants.alpha.get_eab_key("planted") is None


async def test_app_role_cannot_rewrite_the_audit_chain(tenants: TwoTenants) -> None:
    conn = await tenants.app_connection()
    try:
        await in_context(conn, "alpha-id")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("UPDATE tenant_alpha_id.audit SET data = '{}'")
    finally:
        await conn.close()

    assert [r.event for r in await tenants.alpha.list_audit()] == ["alpha"]


async def test_backend_refuses_to_serve_as_a_superuser(tenants: TwoTenants, tmp_path: Path) -> None:
    stored = json.loads(tenants.cluster.secrets_file.read_text())
    owner_dsn = tenants.dsn.replace(
        tenants.dsn.split("//", 1)[1].split("@", 1)[0],
        f"{OWNER_ROLE}:{stored['owner_password']}",
    )
    settings = StoreSettings(backend="postgres", dsn=tenants.dsn, admin_dsn=owner_dsn)
    backend = PostgresBackend(settings, tmp_path / "other")

    with pytest.raises(ConfigError, match="superuser or BYPASSRLS"):
        await backend.open_registry()
    await backend.close()


async def test_store_rows_carry_their_tenant_id(tenants: TwoTenants) -> None:
    await tenants.alpha.update_account(
        replace(account("tp-alpha", "mailto:new@example.com"), status="deactivated")
    )
    conn = await asyncpg.connect(tenants.dsn)  # the superuser sees past the policies
    try:
        owners = await conn.fetch(
            "SELECT DISTINCT tenant_id FROM tenant_alpha_id.accounts"
            " UNION SELECT DISTINCT tenant_id FROM tenant_alpha_id.audit"
        )
    finally:
        await conn.close()

    assert [row["tenant_id"] for row in owners] == ["alpha-id"]


# The write functions (acme_mt_functions) bind exactly as plain statements do.

NO_AUDIT = "NULL, NULL, NULL, NULL, NULL, NULL, NULL"


async def test_write_function_in_alpha_context_cannot_change_beta(tenants: TwoTenants) -> None:
    conn = await tenants.app_connection()
    try:
        with pytest.raises(asyncpg.RaiseError, match="no such pending certificate"):
            await conn.fetchval(
                "SELECT acme_mt_functions.complete_issuance('alpha-id', 'tenant_beta_id',"
                f" {NO_AUDIT}, '0a', '\\x00', now(), now(),"
                " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
            )
        with pytest.raises(asyncpg.PostgresError):
            await conn.fetchval(
                "SELECT acme_mt_functions.record_pending_certificate('alpha-id',"
                f" 'tenant_beta_id', {NO_AUDIT}, NULL, 'ff', 'acct-1', NULL, now(),"
                " now(), now(), 0, 'acme', 1)"
            )
        outside = await conn.fetchval(
            "SELECT count(*) FROM tenant_beta_id.certificates WHERE serial IN ('0a', 'ff')"
        )
    finally:
        await conn.close()

    assert outside == 0
    pending = await tenants.beta.get_certificate("0a")
    assert pending is not None and (pending.status, pending.der) == ("pending", None)
    assert await tenants.beta.get_certificate("ff") is None


async def test_account_read_function_in_alpha_context_sees_nothing_of_beta(
    tenants: TwoTenants,
) -> None:
    read = "SELECT id, contact FROM acme_mt_functions.account_by($1, $2, $3, $4)"
    conn = await tenants.app_connection()
    try:
        as_alpha = await conn.fetch(read, "alpha-id", "tenant_beta_id", "id", "acct-1")
        by_thumbprint = await conn.fetch(
            read, "alpha-id", "tenant_beta_id", "thumbprint", "tp-beta"
        )
        as_beta = await conn.fetch(read, "beta-id", "tenant_beta_id", "id", "acct-1")
        with pytest.raises(asyncpg.RaiseError, match="read by id or thumbprint"):
            await conn.fetch(read, "beta-id", "tenant_beta_id", "contact", "x")
    finally:
        await conn.close()

    assert (as_alpha, by_thumbprint) == ([], [])
    assert [row["contact"] for row in as_beta] == ['["mailto:beta@example.com"]']
    account = await tenants.alpha.get_account("acct-1")
    assert account is not None and account.contact == ("mailto:alpha@example.com",)
    assert await tenants.alpha.get_account_by_thumbprint("tp-beta") is None


async def test_request_read_functions_in_alpha_context_see_nothing_of_beta(
    tenants: TwoTenants,
) -> None:
    challenge = Challenge("chall-b", "authz-b", "http-01", "token-b", "valid", NOW)
    authorization = Authorization(
        "authz-b",
        "acct-1",
        Identifier("dns", "beta.example"),
        "valid",
        NOW + DAY,
        wildcard=False,
        challenges=(challenge,),
        created=NOW,
    )
    order = Order(
        "order-b",
        "acct-1",
        "valid",
        (Identifier("dns", "beta.example"),),
        ("authz-b",),
        NOW + DAY,
        NOW,
    )
    await tenants.beta.create_order(order, [authorization])
    reads = {
        "order_by_id": ("order-b",),
        "authorization_by": ("authz-b", None, None, None, None, None),
        "challenge_by_id": ("chall-b",),
        "certificate_by_serial": ("0a",),
    }
    reuse = (None, "acct-1", "dns", "beta.example", False, NOW)
    conn = await tenants.app_connection()
    try:
        seen: dict[str, tuple[int, int]] = {}
        for function, values in [*reads.items(), ("authorization_by", reuse)]:
            marks = ", ".join(f"${n}" for n in range(1, len(values) + 3))
            statement = f"SELECT * FROM acme_mt_functions.{function}({marks})"
            as_alpha = await conn.fetch(statement, "alpha-id", "tenant_beta_id", *values)
            as_beta = await conn.fetch(statement, "beta-id", "tenant_beta_id", *values)
            seen[f"{function}{len(seen)}"] = (len(as_alpha), len(as_beta))
        leaked = await conn.fetchval("SELECT current_setting('acme_mt.tenant_id', true)")
    finally:
        await conn.close()

    assert list(seen.values()) == [(0, 1)] * 5
    assert leaked in (None, "")
    assert await tenants.beta.get_order("order-b") == order
    assert await tenants.beta.get_authorization("authz-b") == authorization
    assert await tenants.alpha.get_order("order-b") is None
    assert await tenants.alpha.get_authorization("authz-b") is None
    assert await tenants.alpha.get_challenge("chall-b") is None
    assert (
        await tenants.alpha.find_reusable_authorization(
            "acct-1", Identifier("dns", "beta.example"), False, NOW
        )
        is None
    )
    own = await tenants.alpha.get_certificate("0a")
    assert own is not None and own.status == "pending"


async def test_account_with_nonce_in_alpha_context_reads_and_spends_nothing_of_beta(
    tenants: TwoTenants,
) -> None:
    call = (
        "SELECT id, nonce_fresh FROM acme_mt_functions.account_with_nonce($1, $2, $3, $4, $5, $6)"
    )
    expires = NOW + DAY
    conn = await tenants.app_connection()
    try:
        as_alpha = await conn.fetch(call, "alpha-id", "tenant_beta_id", "acct-1", None, None, True)
        with pytest.raises(asyncpg.PostgresError):
            await conn.fetch(
                call, "alpha-id", "tenant_beta_id", "acct-1", "ab" * 15, expires, False
            )
        as_beta = await conn.fetch(
            call, "beta-id", "tenant_beta_id", "acct-1", "cd" * 15, expires, False
        )
        again = await conn.fetch(
            call, "beta-id", "tenant_beta_id", "acct-1", "cd" * 15, expires, False
        )
    finally:
        await conn.close()

    assert [tuple(row) for row in as_alpha] == [(None, False)]
    assert [tuple(row) for row in as_beta] == [("acct-1", True)]
    assert [tuple(row) for row in again] == [("acct-1", False)]
    superuser = await asyncpg.connect(tenants.dsn)
    try:
        spent = await superuser.fetch("SELECT value, tenant_id FROM tenant_beta_id.nonces")
    finally:
        await superuser.close()
    assert [tuple(row) for row in spent] == [("cd" * 15, "beta-id")]


async def test_write_functions_run_as_the_caller_and_only_the_app_role_runs_them(
    tenants: TwoTenants,
) -> None:
    conn = await asyncpg.connect(tenants.dsn)  # the superuser, to read the catalogue
    try:
        await conn.execute("CREATE ROLE acme_mt_stranger")
        functions = await conn.fetch(
            "SELECT p.proname, pg_get_userbyid(p.proowner) AS owner, p.prosecdef,"
            " has_function_privilege($1, p.oid, 'EXECUTE') AS app,"
            " has_function_privilege('acme_mt_stranger', p.oid, 'EXECUTE') AS stranger"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'acme_mt_functions' ORDER BY p.proname",
            APP_ROLE,
        )
        await conn.execute("DROP ROLE acme_mt_stranger")
    finally:
        await conn.close()
    app = await tenants.app_connection()
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(
                "CREATE OR REPLACE FUNCTION acme_mt_functions.record_audit() RETURNS text"
                " LANGUAGE sql AS 'SELECT 1::text'"
            )
    finally:
        await app.close()

    assert len(functions) >= 10
    assert {(f["owner"], f["prosecdef"], f["app"], f["stranger"]) for f in functions} == {
        (OWNER_ROLE, False, True, False)
    }
