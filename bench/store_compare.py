#!/usr/bin/env python3
"""Store issuance cycles per second, PostgreSQL beside SQLite, at 10, 100 and 1,000 tenants.

One cycle is what the registration authority asks of a tenant's store for one
certificate (RFC 8555 §7.4): ``create_order`` with one new authorization of
three challenges, ``update_authorization`` to valid, ``update_order`` to ready,
``begin_issuance`` and ``complete_issuance`` with a 1 KB DER, each write with
the audit entry the authority appends. Workers run cycles concurrently, each on
a tenant picked at random among those onboarded, so the figures at 1,000
tenants show what spreading the same load over many tenants costs.

Tenants are onboarded in full (key partition, CA certificate, store, registry
row) through ``acme_mt.tenancy.lifecycle``. With ``--memory`` the benchmark
then starts ``acme-mt serve`` on the same data, fetches every tenant's ACME
directory once so each tenant's context is loaded, and reads the server's
resident memory.

After each onboarding step every new tenant runs one cycle, reported apart
(``first_cycle_per_tenant``), as the tenants of a running server have issued
before; with ``--warm N`` every tenant then runs N more cycles in turn, also
reported apart, so that the measurement meets tenants the way a server
that has run a while does, warm on the connections they use; then the
cycles are measured ``--repeat`` times. Each measurement gives the benchmark
process's CPU per cycle (PostgreSQL's client; all of SQLite, whose threads
live here) and, for the throwaway cluster, the server's. The summary gives
medians and ranges per store and tenant count, and PostgreSQL's median rate
over SQLite's from the same run.

PostgreSQL runs in a throwaway cluster on disk with its durable defaults
(``--dsn`` names another); SQLite runs in a temporary data directory. Both
run on uvloop, as ``acme-mt serve`` does, unless ``--loop asyncio``.
Figures only; nothing passes or fails.

    bench/store_compare.py --tenants 10,100,1000 --cycles 400 --workers 8 --repeat 3 --memory
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _procs import resident_kib  # noqa: E402

from acme_mt.backends import open_keystore, open_store_backend  # noqa: E402
from acme_mt.config import Settings, load_settings  # noqa: E402
from acme_mt.models import (  # noqa: E402
    Account,
    AuditEntry,
    Authorization,
    CertificateRecord,
    Challenge,
    Identifier,
    Order,
    utcnow,
)
from acme_mt.storage.base import TenantStore  # noqa: E402
from acme_mt.tenancy.lifecycle import ensure_provider, onboard_tenant  # noqa: E402
from tests.support.live import free_port  # noqa: E402
from tests.support.postgres import start_throwaway_cluster  # noqa: E402

T = TypeVar("T")

MAX_CYCLES = 100_000
MAX_REPEAT = 20
ONBOARD_CONCURRENCY = 4
DER = secrets.token_bytes(1024)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


async def one_cycle(store: TenantStore, account_id: str) -> None:
    """The store calls of one ACME issuance, with the authority's audit entries."""
    now = utcnow()
    base = secrets.token_hex(8)
    authorization = Authorization(
        f"az-{base}",
        account_id,
        Identifier("dns", f"{base}.bench.test"),
        "pending",
        now + timedelta(days=7),
        False,
        tuple(
            Challenge(f"ch-{base}-{kind}", f"az-{base}", kind, secrets.token_urlsafe(32), "pending")
            for kind in ("http-01", "dns-01", "tls-alpn-01")
        ),
    )
    order = Order(
        f"or-{base}",
        account_id,
        "pending",
        (authorization.identifier,),
        (authorization.id,),
        now + timedelta(days=7),
        now,
    )
    created = AuditEntry("order.created", {"id": order.id})
    await store.create_order(order, [authorization], [created])
    http, *others = authorization.challenges
    valid = replace(
        authorization,
        status="valid",
        challenges=(replace(http, status="valid", validated=now), *others),
    )
    await store.update_authorization(valid, [AuditEntry("authorization.valid", {"id": valid.id})])
    await store.update_order(replace(order, status="ready"))
    serial = secrets.token_hex(16)
    record = CertificateRecord(
        serial, account_id, order.id, "pending", now, now + timedelta(days=90), now
    )
    processing = replace(order, status="processing", certificate_serial=serial)
    if not await store.begin_issuance(processing, record, [AuditEntry("certificate.signing", {})]):
        raise RuntimeError("begin_issuance refused a ready order")
    done = replace(processing, status="valid")
    signed = replace(record, status="valid", der=DER)
    await store.complete_issuance(done, signed, [AuditEntry("certificate.issued", {})])


async def run_cycles(
    stores: list[tuple[TenantStore, str]],
    cycles: int,
    workers: int,
    each_once: bool = False,
    server_cpu: Callable[[], float] | None = None,
) -> dict[str, float]:
    """Run ``cycles`` cycles on ``workers`` concurrent tasks; throughput, latency and CPU.

    Each cycle picks a tenant at random, or with ``each_once`` the next tenant in turn.
    CPU per cycle is this process's (the client of PostgreSQL; all of SQLite's
    work, whose threads live here) and, given ``server_cpu``, the server's.
    """
    latencies: list[float] = []
    remaining = cycles
    queue = list(stores)

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            store, account_id = queue.pop() if each_once else random.choice(stores)
            started = time.perf_counter()
            await one_cycle(store, account_id)
            latencies.append(time.perf_counter() - started)

    server_before = server_cpu() if server_cpu else 0.0
    cpu_before, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    figures = {
        "cycles_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "bench_cpu_ms": round(cpu * 1000 / len(latencies), 2),
    }
    if server_cpu:
        figures["server_cpu_ms"] = round((server_cpu() - server_before) * 1000 / len(latencies), 2)
    return figures


def cluster_cpu_seconds(data_dir: Path) -> float:
    """User and system CPU used so far by a local PostgreSQL: the postmaster and its children."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == postmaster:
            ticks += sum(int(f) for f in fields[11:15])  # its own and its reaped children's
        elif int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def measure_backend(
    settings: Settings,
    counts: list[int],
    cycles: int,
    workers: int,
    repeat: int,
    server_cpu: Callable[[], float] | None,
    warm: int = 0,
) -> list[dict[str, Any]]:
    """Onboard tenants up to each count and run the cycles over all of them, ``repeat`` times.

    With ``warm``, every tenant first runs that many more cycles, reported apart,
    so the measurement sees a server whose tenants have all issued before on
    the connections they use, rather than one still meeting tenants cold.
    """
    stores_backend = open_store_backend(settings)
    keystore = open_keystore(settings)
    registry = await stores_backend.open_registry()
    provider = await ensure_provider(settings, registry, keystore)
    stores: list[tuple[TenantStore, str]] = []
    results = []
    limit = asyncio.Semaphore(ONBOARD_CONCURRENCY)

    async def onboard(index: int) -> tuple[TenantStore, str]:
        async with limit:
            slug = f"bench-{index:05d}"
            record = await onboard_tenant(
                settings, registry, stores_backend, keystore, provider, slug, {}
            )
            store = await stores_backend.open_tenant_store(record.id, slug)
            account = Account("acct", {"kty": "EC"}, f"tp-{slug}", "valid", (), utcnow())
            await store.create_account(account)
            return store, account.id

    try:
        for count in counts:
            started = time.perf_counter()
            new = await asyncio.gather(*(onboard(i) for i in range(len(stores), count)))
            onboarded = time.perf_counter() - started
            stores += new
            # Every new tenant issues once before the clock starts, as the tenants of a
            # running server have; these first cycles are reported on their own.
            first = await run_cycles(new, len(new), workers, True, server_cpu)
            results.append(
                {
                    "backend": settings.store.backend,
                    "tenants": count,
                    "onboard_s": round(onboarded, 1),
                    "first_cycle_per_tenant": True,
                    **first,
                }
            )
            print(json.dumps(results[-1]), flush=True)
            if warm > 0:
                passes = stores * warm
                warmed = await run_cycles(passes, len(passes), workers, True, server_cpu)
                results.append(
                    {
                        "backend": settings.store.backend,
                        "tenants": count,
                        "warm_up": warm,
                        **warmed,
                    }
                )
                print(json.dumps(results[-1]), flush=True)
            for run in range(1, repeat + 1):
                figures = await run_cycles(stores, cycles, workers, server_cpu=server_cpu)
                results.append(
                    {
                        "backend": settings.store.backend,
                        "tenants": count,
                        "onboard_s": round(onboarded, 1),
                        "repeat": run,
                        **figures,
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    finally:
        for store, _ in stores:
            await store.close()
        await registry.close()
        await stores_backend.close()
        await keystore.close()
    return results


def server_memory(data_dir: Path, env: dict[str, str], slugs: list[str]) -> dict[str, Any]:
    """Start ``acme-mt serve``, load every tenant once, and read its resident memory (KiB)."""
    https_port, http_port = free_port(), free_port()
    env = {
        **env,
        "ACME_MT_SERVER_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
        "ACME_MT_SERVER_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "ACME_MT_SERVER_HTTPS_URL": f"https://localhost:{https_port}",
        "ACME_MT_SERVER_HTTP_URL": f"http://localhost:{http_port}",
    }
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - the process owns it
    command = [sys.executable, "-m", "acme_mt", "serve", "--data-dir", str(data_dir)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        root = wait_for(f"http://127.0.0.1:{http_port}/root.pem")
        context = __import__("ssl").create_default_context(cadata=root.decode())
        started_rss = resident_kib(process.pid)
        for slug in slugs:
            url = f"https://localhost:{https_port}/{slug}/acme/directory"
            with urllib.request.urlopen(url, context=context, timeout=30) as reply:
                reply.read()
        time.sleep(1)
        loaded_rss = resident_kib(process.pid)
        threads = len(os.listdir(f"/proc/{process.pid}/task"))
    finally:
        process.terminate()
        process.wait(30)
    return {
        "tenants": len(slugs),
        "rss_start_mib": round(started_rss / 1024, 1),
        "rss_all_loaded_mib": round(loaded_rss / 1024, 1),
        "threads": threads,
    }


def wait_for(url: str) -> bytes:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bytes(reply.read())
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url}")


def environment(backend: str, dsn: str, secrets_file: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACME_MT_")}
    env["ACME_MT_STORE_BACKEND"] = backend
    if backend == "postgres":
        env["ACME_MT_STORE_DSN"] = dsn
        env["ACME_MT_STORE_SECRETS_FILE"] = secrets_file
    return env


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = sorted({int(n) for n in args.tenants.split(",")})
    cycles = min(args.cycles, MAX_CYCLES)
    args.repeat = max(1, min(args.repeat, MAX_REPEAT))
    report: dict[str, Any] = {
        "cycles": cycles,
        "workers": args.workers,
        "repeat": args.repeat,
        "loop": args.loop,
        "runs": [],
        "memory": [],
    }
    cluster = None
    if "postgres" in args.backends and not args.dsn:
        cluster = start_throwaway_cluster(in_memory=False, durable=True)
    variants = [("sqlite", "")] if "sqlite" in args.backends else []
    if "postgres" in args.backends:
        variants += [("postgres", mode) for mode in args.synchronous_commit.split(",")]
    try:
        for backend, mode in variants:
            data_dir = Path(tempfile.mkdtemp(prefix=f"store-bench-{backend}-"))
            dsn = ""
            if backend == "postgres":
                dsn = args.dsn or cluster.fresh_database("bench")  # type: ignore[union-attr]
                asyncio.run(set_synchronous_commit(dsn, mode))
            env = environment(backend, dsn, str(data_dir / "store-secrets.json"))
            settings = load_settings(None, str(data_dir), env)
            server_cpu = None
            if backend == "postgres" and cluster is not None and cluster.data_dir is not None:
                pgdata = cluster.data_dir / "pgdata"
                server_cpu = functools.partial(cluster_cpu_seconds, pgdata)
            measured = measure_backend(
                settings, counts, cycles, args.workers, args.repeat, server_cpu, args.warm
            )
            runs = run_on_loop(measured, args.loop)
            for figures in runs:
                figures["synchronous_commit"] = mode or None
            report["runs"] += runs
            if args.memory and (backend, mode) == variants[-1 if backend == "postgres" else 0]:
                slugs = [f"bench-{i:05d}" for i in range(counts[-1])]
                memory = {"backend": backend, **server_memory(data_dir, env, slugs)}
                print(json.dumps(memory), flush=True)
                report["memory"].append(memory)
    finally:
        if cluster is not None:
            cluster.close()
    report["summary"] = summarize(report["runs"])
    return report


def run_on_loop(coroutine: Coroutine[Any, Any, T], loop: str) -> T:
    """Run on uvloop, as ``acme-mt serve`` does by default, or on asyncio's own loop."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians and range per store and tenant count, and PostgreSQL's rate over SQLite's.

    ``p50_vs_fewest`` compares a store's median p50 with its own at the fewest
    tenants; ``ratio_to_sqlite`` divides median rates measured in this run.
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for figures in runs:
        if not figures.get("first_cycle_per_tenant") and not figures.get("warm_up"):
            mode = figures["synchronous_commit"]
            store = figures["backend"] + (f" synchronous_commit={mode}" if mode else "")
            groups.setdefault((store, figures["tenants"]), []).append(figures)
    summary = []
    for (store, tenants), measured in sorted(groups.items()):
        rates = [f["cycles_per_s"] for f in measured]
        line: dict[str, Any] = {
            "store": store,
            "tenants": tenants,
            "range": [min(rates), max(rates)],
        }
        for key in ("cycles_per_s", "p50_ms", "bench_cpu_ms", "server_cpu_ms"):
            if key in measured[0]:
                line[key] = round(median(f[key] for f in measured), 2)
        fewest = min(t for s, t in groups if s == store)
        line["p50_vs_fewest"] = round(
            line["p50_ms"] / median(f["p50_ms"] for f in groups[(store, fewest)]), 2
        )
        sqlite = groups.get(("sqlite", tenants))
        if sqlite and store != "sqlite":
            line["ratio_to_sqlite"] = round(
                line["cycles_per_s"] / median(f["cycles_per_s"] for f in sqlite), 2
            )
        summary.append(line)
        print(json.dumps({"summary": line}), flush=True)
    return summary


async def set_synchronous_commit(dsn: str, mode: str) -> None:
    """Set the database's commit durability: ``on`` waits for the WAL flush, ``off`` does not."""
    import asyncpg

    if mode not in ("on", "off"):
        raise ValueError("synchronous_commit is on or off here")
    conn = await asyncpg.connect(dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {mode}')
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--tenants", default="10,100,1000", help="tenant counts, ascending")
    parser.add_argument("--cycles", type=int, default=400, help="cycles per measurement")
    parser.add_argument("--workers", type=int, default=8, help="concurrent cycles")
    parser.add_argument("--dsn", help="a superuser DSN instead of a throwaway cluster")
    parser.add_argument(
        "--synchronous-commit", default="on,off", help="PostgreSQL commit modes to measure"
    )
    parser.add_argument("--repeat", type=int, default=1, help="measurements per tenant count")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the event loop to run on"
    )
    parser.add_argument(
        "--warm", type=int, default=0, help="cycles per tenant, in turn, before measuring"
    )
    parser.add_argument("--memory", action="store_true", help="measure a server's memory too")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
