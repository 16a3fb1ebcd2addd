"""The ``acme-mt`` command line (ARCHITECTURE: command line).

Every command takes ``--config`` and ``--data-dir`` as ``serve`` does, so it
works on the same data as a running server; reporting commands print one JSON
object with ``--json``. Secrets never come from arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from acme_mt.app import run_server, run_supervisor, run_worker
from acme_mt.audit import verify_chain
from acme_mt.authority.domains import record_name, verify_domain
from acme_mt.authority.enrollment import create_credential, revoke_credential
from acme_mt.backends import open_keystore, open_store_backend
from acme_mt.config import Settings, load_settings
from acme_mt.errors import AcmeMtError
from acme_mt.keystores.base import KeyStore
from acme_mt.log import setup_logging
from acme_mt.models import AuditEntry, EabKey, EabPolicy, new_hmac_key, new_id, rfc3339, utcnow
from acme_mt.storage.base import RegistryStore, StoreBackend, TenantRecord, TenantStore
from acme_mt.tenancy.lifecycle import ensure_provider, onboard_tenant, set_tenant_status
from acme_mt.tenancy.policy import TenantPolicy
from acme_mt.urls import AcmeUrls
from acme_mt.validation.resolver import Resolver
from acme_mt.workers import link_fd_from_environment, worker_command, worker_count


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if args.json else text)


def _tenant_json(settings: Settings, record: TenantRecord) -> dict[str, Any]:
    return {
        "slug": record.slug,
        "status": record.status,
        "directory_url": AcmeUrls(settings.server.https_url, record.slug).directory(),
        "model": record.model,
        "tier": record.tier,
        "created": record.created.isoformat(),
        "policy": record.policy,
    }


@dataclass(frozen=True)
class CliContext:
    """What every command works on: the settings and the opened back ends."""

    settings: Settings
    stores: StoreBackend
    registry: RegistryStore
    keystore: KeyStore


Command = Callable[[CliContext, argparse.Namespace], Awaitable[int]]


async def _with_registry(settings: Settings, action: Command, args: argparse.Namespace) -> int:
    stores = open_store_backend(settings)
    keystore = open_keystore(settings)
    registry = await stores.open_registry()
    try:
        return await action(CliContext(settings, stores, registry, keystore), args)
    finally:
        await registry.close()
        await stores.close()
        await keystore.close()


async def _tenant_create(ctx: CliContext, args: argparse.Namespace) -> int:
    policy: dict[str, Any] | None = None
    if args.policy:
        try:
            policy = tomllib.loads(Path(args.policy).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AcmeMtError(f"cannot read policy file: {exc}") from None
        policy = policy.get("policy", policy)
    provider = await ensure_provider(ctx.settings, ctx.registry, ctx.keystore)
    record = await onboard_tenant(
        ctx.settings,
        ctx.registry,
        ctx.stores,
        ctx.keystore,
        provider,
        args.slug,
        policy,
        model=args.model,
        tier=args.tier,
    )
    body = _tenant_json(ctx.settings, record)
    body["ca_certificate"] = record.ca_certificate_pem
    body["ca_url"] = f"{ctx.settings.server.http_url.rstrip('/')}/{record.slug}/ca.pem"
    _emit(
        args,
        body,
        f"tenant {record.slug} created\ndirectory: {body['directory_url']}\n"
        f"CA certificate:\n{record.ca_certificate_pem}",
    )
    return 0


async def _tenant_list(ctx: CliContext, args: argparse.Namespace) -> int:
    records = await ctx.registry.list_tenants()
    tenants = [_tenant_json(ctx.settings, r) for r in records]
    text = "\n".join(f"{t['slug']}\t{t['status']}\t{t['directory_url']}" for t in tenants)
    _emit(args, {"tenants": tenants}, text)
    return 0


async def _tenant_show(ctx: CliContext, args: argparse.Namespace) -> int:
    record = await ctx.registry.get_tenant(args.slug)
    if record is None:
        raise AcmeMtError(f"no tenant {args.slug!r}")
    body = _tenant_json(ctx.settings, record)
    _emit(args, body, "\n".join(f"{k}: {v}" for k, v in body.items()))
    return 0


async def _tenant_suspend(ctx: CliContext, args: argparse.Namespace) -> int:
    record = await set_tenant_status(ctx.registry, args.slug, "suspended")
    _emit(args, _tenant_json(ctx.settings, record), f"tenant {record.slug} suspended")
    return 0


@contextlib.asynccontextmanager
async def _tenant_store(ctx: CliContext, slug: str) -> AsyncIterator[TenantStore]:
    """One tenant's store, open for the length of a command."""
    record = await ctx.registry.get_tenant(slug)
    if record is None:
        raise AcmeMtError(f"no tenant {slug!r}")
    store = await ctx.stores.open_tenant_store(record.id, record.slug)
    try:
        yield store
    finally:
        await store.close()


async def _eab_create(ctx: CliContext, args: argparse.Namespace) -> int:
    record = await ctx.registry.get_tenant(args.slug)
    if record is None:
        raise AcmeMtError(f"no tenant {args.slug!r}")
    profiles = TenantPolicy.from_dict(record.policy).all_profiles()
    unknown = [p for p in args.profile if p not in {q.name for q in profiles}]
    if unknown:
        raise AcmeMtError(f"tenant {args.slug} has no profile {', '.join(unknown)}")
    if args.max_accounts < 1:
        raise AcmeMtError("--max-accounts must be at least 1")
    expires = None
    if args.expires_in_days is not None:
        expires = utcnow() + timedelta(days=args.expires_in_days)
    policy = EabPolicy(
        allowed_suffixes=tuple(s.lower().strip(".") for s in args.suffix),
        allowed_profiles=tuple(args.profile),
        expires=expires,
        max_accounts=args.max_accounts,
        pre_validated=args.pre_validated,
    )
    store = await ctx.stores.open_tenant_store(record.id, record.slug)
    try:
        key = EabKey(kid=new_id(), hmac_key=new_hmac_key(), created=utcnow(), policy=policy)
        audit = AuditEntry("eab.created", {"kid": key.kid, "policy": policy.to_json()}, "cli")
        await store.create_eab_key(key, (audit,))
    finally:
        await store.close()
    body = {"kid": key.kid, "hmac_key": _b64url(key.hmac_key), **policy.to_json()}
    _emit(args, body, f"kid: {body['kid']}\nhmac_key: {body['hmac_key']}")
    return 0


async def _eab_list(ctx: CliContext, args: argparse.Namespace) -> int:
    async with _tenant_store(ctx, args.slug) as store:
        keys = await store.list_eab_keys()
    rows = [
        {"kid": k.kid, "created": rfc3339(k.created), "revoked": k.revoked, **k.policy.to_json()}
        for k in keys
    ]
    text = "\n".join(f"{r['kid']}\trevoked={r['revoked']}\texpires={r['expires']}" for r in rows)
    _emit(args, {"keys": rows}, text)
    return 0


async def _eab_revoke(ctx: CliContext, args: argparse.Namespace) -> int:
    async with _tenant_store(ctx, args.slug) as store:
        audit = AuditEntry("eab.revoked", {"kid": args.kid}, "cli")
        changed = await store.revoke_eab_key(args.kid, (audit,))
    if not changed:
        raise AcmeMtError(f"no usable EAB key {args.kid!r} in {args.slug}")
    _emit(args, {"kid": args.kid, "revoked": True}, f"EAB key {args.kid} revoked")
    return 0


async def _est_credential_create(ctx: CliContext, args: argparse.Namespace) -> int:
    async with _tenant_store(ctx, args.slug) as store:
        credential, password = await create_credential(store)
    body = {"id": credential.id, "username": credential.username, "password": password}
    text = f"id: {credential.id}\nusername: {credential.username}\npassword: {password}"
    _emit(args, body, text + "\n(the password is shown only this once)")
    return 0


async def _est_credential_revoke(ctx: CliContext, args: argparse.Namespace) -> int:
    async with _tenant_store(ctx, args.slug) as store:
        changed = await revoke_credential(store, args.id)
    if not changed:
        raise AcmeMtError(f"no usable EST credential {args.id!r} in {args.slug}")
    _emit(args, {"id": args.id, "revoked": True}, f"EST credential {args.id} revoked")
    return 0


async def _audit_verify(ctx: CliContext, args: argparse.Namespace) -> int:
    async with _tenant_store(ctx, args.slug) as store:
        records = []
        after = 0
        while True:
            page = await store.list_audit(after, 1000)
            if not page:
                break
            records.extend(page)
            after = page[-1].seq
    broken = verify_chain(records)
    body = {"slug": args.slug, "records": len(records), "broken_at": broken, "ok": broken is None}
    text = (
        f"audit chain of {args.slug}: {len(records)} records, intact"
        if broken is None
        else f"audit chain of {args.slug} breaks at record {broken}"
    )
    _emit(args, body, text)
    return 0 if broken is None else 1


async def _domain_verify(ctx: CliContext, args: argparse.Namespace) -> int:
    validation = ctx.settings.validation
    resolver = Resolver(validation.dns_resolver, validation.timeout_seconds)
    async with _tenant_store(ctx, args.slug) as store:
        state = await verify_domain(store, resolver, args.domain)
    body = {
        "domain": state.domain,
        "record": record_name(state.domain),
        "type": "TXT",
        "value": state.token,
        "verified": rfc3339(state.verified) if state.verified else None,
    }
    text = (
        f"{state.domain} verified at {body['verified']}"
        if state.verified
        else f"publish {body['record']} TXT {state.token!r}, then run this command again"
    )
    _emit(args, body, text)
    return 0 if state.verified else 3


async def _ari_advance(ctx: CliContext, args: argparse.Namespace) -> int:
    record = await ctx.registry.get_tenant(args.slug)
    if record is None:
        raise AcmeMtError(f"no tenant {args.slug!r}")
    cutoff = args.issued_before or rfc3339(utcnow() + timedelta(seconds=1))
    policy = {**record.policy, "renew_issued_before": cutoff}
    TenantPolicy.from_dict(policy, default_require_eab=record.slug != "default")
    await ctx.registry.update_tenant(replace(record, policy=policy))
    body = {"slug": record.slug, "renew_issued_before": cutoff}
    _emit(args, body, f"certificates of {record.slug} issued before {cutoff} should renew now")
    return 0


async def _db_migrate(ctx: CliContext, args: argparse.Namespace) -> int:
    migrate = getattr(ctx.stores, "migrate", None)
    if migrate is not None:
        report = await migrate()
    else:
        # The embedded store applies pending migrations whenever it opens a file.
        report = {"registry": [], "tenants": {}}
        for record in await ctx.registry.list_tenants():
            store = await ctx.stores.open_tenant_store(record.id, record.slug)
            await store.close()
            report["tenants"][record.slug] = []
    applied = sum(len(v) for v in report["tenants"].values()) + len(report["registry"])
    body = {"backend": ctx.settings.store.backend, **report}
    current = len(report["tenants"])
    _emit(args, body, f"{applied} migrations applied; {current} tenant stores current")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings file")
    common.add_argument("--data-dir", help="data directory of the embedded back ends")
    common.add_argument("--json", action="store_true", help="print one JSON object")
    parser = argparse.ArgumentParser(prog="acme-mt", description="Multi-tenant PKI server")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", parents=[common], help="run both listeners")

    tenant = commands.add_parser("tenant", help="tenant lifecycle").add_subparsers(
        dest="action", required=True
    )
    create = tenant.add_parser("create", parents=[common], help="onboard a tenant")
    create.add_argument("slug")
    create.add_argument(
        "--model", choices=["shared", "dedicated", "hierarchical"], default="shared"
    )
    create.add_argument("--tier", default="standard")
    create.add_argument("--policy", help="TOML file with the tenant's policy")
    create.set_defaults(run=_tenant_create)
    tenant.add_parser("list", parents=[common]).set_defaults(run=_tenant_list)
    for name, run in (("show", _tenant_show), ("suspend", _tenant_suspend)):
        sub = tenant.add_parser(name, parents=[common])
        sub.add_argument("slug")
        sub.set_defaults(run=run)

    eab = commands.add_parser("eab", help="external account binding keys").add_subparsers(
        dest="action", required=True
    )
    eab_create = eab.add_parser("create", parents=[common], help="make an EAB key")
    eab_create.add_argument("slug")
    eab_create.add_argument(
        "--suffix", action="append", default=[], help="allowed identifier suffix (repeatable)"
    )
    eab_create.add_argument(
        "--profile", action="append", default=[], help="allowed profile (repeatable)"
    )
    eab_create.add_argument("--expires-in-days", type=int, help="the key stops binding after this")
    eab_create.add_argument(
        "--max-accounts", type=int, default=1, help="how many accounts may bind (default 1)"
    )
    eab_create.add_argument(
        "--pre-validated",
        action="store_true",
        help="accounts skip live challenges for names under the tenant's verified domains",
    )
    eab_create.set_defaults(run=_eab_create)
    eab_list = eab.add_parser("list", parents=[common], help="list a tenant's EAB keys")
    eab_list.add_argument("slug")
    eab_list.set_defaults(run=_eab_list)
    eab_revoke = eab.add_parser("revoke", parents=[common], help="stop a key binding accounts")
    eab_revoke.add_argument("slug")
    eab_revoke.add_argument("kid")
    eab_revoke.set_defaults(run=_eab_revoke)

    est = commands.add_parser("est", help="EST enrollment").add_subparsers(
        dest="action", required=True
    )
    credential = est.add_parser("credential", help="EST enrollment credentials (HTTP Basic)")
    credential_actions = credential.add_subparsers(dest="credential_action", required=True)
    credential_create = credential_actions.add_parser(
        "create", parents=[common], help="make a credential; its password is shown once"
    )
    credential_create.add_argument("slug")
    credential_create.set_defaults(run=_est_credential_create)
    credential_revoke = credential_actions.add_parser(
        "revoke", parents=[common], help="stop a credential at once"
    )
    credential_revoke.add_argument("slug")
    credential_revoke.add_argument("id")
    credential_revoke.set_defaults(run=_est_credential_revoke)

    domain = commands.add_parser("domain", help="tenant domain verification").add_subparsers(
        dest="action", required=True
    )
    domain_verify = domain.add_parser(
        "verify", parents=[common], help="ask for and check the TXT record proving a domain"
    )
    domain_verify.add_argument("slug")
    domain_verify.add_argument("domain")
    domain_verify.set_defaults(run=_domain_verify)

    ari = commands.add_parser("ari", help="ACME renewal information").add_subparsers(
        dest="action", required=True
    )
    advance = ari.add_parser(
        "advance", parents=[common], help="ask clients to renew a tenant's certificates now"
    )
    advance.add_argument("slug")
    advance.add_argument("--issued-before", help="RFC 3339 time; default now")
    advance.set_defaults(run=_ari_advance)

    audit = commands.add_parser("audit", help="audit chain").add_subparsers(
        dest="action", required=True
    )
    verify = audit.add_parser("verify", parents=[common], help="check a tenant's chain")
    verify.add_argument("slug")
    verify.set_defaults(run=_audit_verify)

    db = commands.add_parser("db", help="the store's schema").add_subparsers(
        dest="action", required=True
    )
    db.add_parser(
        "migrate", parents=[common], help="apply pending migrations to the registry and tenants"
    ).set_defaults(run=_db_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config, args.data_dir)
        if args.command == "serve":
            setup_logging()
            _serve(settings, args)
            return 0
        setup_logging("WARNING")
        return int(asyncio.run(_with_registry(settings, args.run, args)))
    except AcmeMtError as exc:
        print(f"acme-mt: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    """One server process, a worker under a supervisor, or the supervisor itself."""
    fd = link_fd_from_environment()
    if fd is not None:
        _run(settings, run_worker(settings, fd))
        return
    count = worker_count(settings)
    if count == 1:
        _run(settings, run_server(settings))
        return
    command = worker_command(args.config, args.data_dir)
    _run(settings, run_supervisor(settings, command, count))


def _run(settings: Settings, coroutine: Awaitable[None]) -> None:
    if settings.server.uvloop:
        try:
            import uvloop

            uvloop.run(coroutine)  # type: ignore[arg-type]
            return
        except ImportError:
            pass
    asyncio.run(coroutine)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
