#!/usr/bin/env python3
"""ACME issuance per second on PostgreSQL beside SQLite, through the load generator.

For each store (SQLite, and PostgreSQL in a throwaway cluster on disk with
its durable defaults) the run onboards tenants in steps (default 10, 100 and
1,000; without external account binding, so the generator's accounts need no
keys), starts ``acme-mt serve`` on that data, and runs the load generator
(``acme_issue.py``) through the whole RFC 8555 flow with its clients spread
evenly over the tenants onboarded: client i orders from tenant
``i * tenants // clients``. So a step of 1,000 tenants has 16 of them busy
among 1,000 whose schemas, files and registry rows exist. Each line gives
certificates per second, p50 and p99, the server's CPU per certificate, and
its resident memory after the run; the summary gives PostgreSQL's rate over
SQLite's and each store's p50 against its own at the fewest tenants. It
prints figures and never fails on time.

    bench/acme_stores.py --tenants 10,100,1000 --clients 16 --certs 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _procs import cpu_seconds, resident_kib  # noqa: E402
from run_pebble import (  # noqa: E402
    Bench,
    acme_mt_env,
    background,
    dns_stub,
    loopback_env,
    wait_for,
)
from store_compare import (  # noqa: E402
    ONBOARD_CONCURRENCY,
    environment,
    set_synchronous_commit,
)

from acme_mt.backends import open_keystore, open_store_backend  # noqa: E402
from acme_mt.config import Settings, load_settings  # noqa: E402
from acme_mt.tenancy.lifecycle import ensure_provider, onboard_tenant  # noqa: E402
from tests.support.postgres import start_throwaway_cluster  # noqa: E402

MAX_TENANTS = 5000


def socket_dsn(dsn: str, directory: Path, port: int) -> str:
    """The same login and database through the cluster's Unix socket in ``directory``."""
    parts = urlsplit(dsn)
    login = parts.netloc.rpartition("@")[0]
    query = urlencode({"host": str(directory), "port": str(port)})
    return urlunsplit((parts.scheme, f"{login}@", parts.path, query, ""))


def slug(index: int) -> str:
    return f"bench-{index:05d}"


async def onboard(settings: Settings, first: int, count: int) -> None:
    """Onboard tenants ``first`` to ``count - 1`` in full, as ``acme-mt tenant create`` does."""
    stores = open_store_backend(settings)
    keystore = open_keystore(settings)
    registry = await stores.open_registry()
    limit = asyncio.Semaphore(ONBOARD_CONCURRENCY)
    try:
        provider = await ensure_provider(settings, registry, keystore)

        async def one(index: int) -> None:
            async with limit:
                policy = {"require_eab": False}
                await onboard_tenant(
                    settings, registry, stores, keystore, provider, slug(index), policy
                )

        await asyncio.gather(*(one(i) for i in range(first, count)))
    finally:
        await registry.close()
        await stores.close()
        await keystore.close()


def issue(
    bench: Bench, data_dir: Path, env: dict[str, str], tenants: int, opts: argparse.Namespace
) -> dict[str, Any]:
    """Serve ``data_dir`` and run the generator over ``tenants`` tenants; its figures."""
    https_port, http_port = bench.free_port(), bench.free_port()
    env = {**env, **acme_mt_env(bench, https_port, http_port)}
    busy = sorted({i * tenants // opts.clients for i in range(opts.clients)})
    urls = [f"https://localhost:{https_port}/{slug(i)}/acme/directory" for i in busy]
    command = [sys.executable, "-m", "acme_mt", "serve", "--data-dir", str(data_dir)]
    with background(command, data_dir / f"serve-{tenants}.log", env) as process:
        root = data_dir / "root-bench.pem"
        root.write_bytes(wait_for(f"http://127.0.0.1:{http_port}/root.pem", process))
        wait_for(urls[0], process, root)
        cpu_before = cpu_seconds(process.pid)
        generator = [
            sys.executable, str(BENCH / "acme_issue.py"), *urls,
            "--clients", str(opts.clients),
            "--certs", str(opts.certs),
            "--http01-port", str(bench.http01_port),
            "--ca-file", str(root),
            "--json",
        ]  # fmt: skip
        done = subprocess.run(
            generator, capture_output=True, text=True, timeout=900, env=loopback_env({})
        )
        cpu_used = cpu_seconds(process.pid) - cpu_before
        rss = resident_kib(process.pid)
    lines = done.stdout.strip().splitlines()
    try:
        figures: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"the generator printed no figures:\n{tail}") from None
    issued = max(figures["certificates"], 1)
    return {
        "tenants": tenants,
        "busy_tenants": len(busy),
        "certificates": figures["certificates"],
        "errors": figures["errors"],
        "certs_per_s": figures["certificates_per_second"],
        "p50_ms": figures["latency_ms"]["p50"],
        "p99_ms": figures["latency_ms"]["p99"],
        "server_cpu_ms_per_cert": round(cpu_used / issued * 1000, 2),
        "server_rss_mib": round(rss / 1024, 1),
        "stalled": figures["stalled"],
    }


def measure_store(
    bench: Bench, backend: str, dsn: str, counts: list[int], opts: argparse.Namespace
) -> list[dict[str, Any]]:
    """One store: onboard up to each count, then issue ``--repeat`` times."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"acme-stores-{backend}-", dir=bench.work))
    env = environment(backend, dsn, str(data_dir / "store-secrets.json"))
    settings = load_settings(None, str(data_dir), env)
    results = []
    onboarded = 0
    for count in counts:
        asyncio.run(onboard(settings, onboarded, count))
        onboarded = count
        for run in range(1, opts.repeat + 1):
            line = {"store": backend, "run": run, **issue(bench, data_dir, env, count, opts)}
            print(json.dumps(line), flush=True)
            results.append(line)
    return results


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median rate and p50 per store and count; PostgreSQL over SQLite; p50 over the fewest."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for line in results:
        groups.setdefault((line["store"], line["tenants"]), []).append(line)
    summary = []
    for (store, tenants), lines in sorted(groups.items()):
        fewest = min(t for s, t in groups if s == store)
        row: dict[str, Any] = {
            "store": store,
            "tenants": tenants,
            "certs_per_s": median(x["certs_per_s"] for x in lines),
            "p50_ms": median(x["p50_ms"] for x in lines),
            "server_cpu_ms_per_cert": median(x["server_cpu_ms_per_cert"] for x in lines),
            "server_rss_mib": max(x["server_rss_mib"] for x in lines),
        }
        row["p50_vs_fewest"] = round(
            row["p50_ms"] / median(x["p50_ms"] for x in groups[(store, fewest)]), 2
        )
        sqlite = groups.get(("sqlite", tenants))
        if store != "sqlite" and sqlite:
            rate = median(x["certs_per_s"] for x in sqlite)
            row["ratio_to_sqlite"] = round(row["certs_per_s"] / rate, 2)
        summary.append(row)
    return summary


def table(summary: list[dict[str, Any]]) -> str:
    columns = ["store", "tenants", "certs/s", "p50 ms", "p50 vs fewest", "server CPU ms/cert"]
    columns += ["server RSS MiB", "rate vs SQLite"]
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in summary:
        cells = [
            row["store"], row["tenants"], row["certs_per_s"], row["p50_ms"],
            row["p50_vs_fewest"], row["server_cpu_ms_per_cert"], row["server_rss_mib"],
            row.get("ratio_to_sqlite", "-"),
        ]  # fmt: skip
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres", help="stores to measure")
    parser.add_argument("--tenants", default="10,100,1000", help="tenant counts, ascending")
    parser.add_argument("--clients", type=int, default=16, help="concurrent ACME clients")
    parser.add_argument("--certs", type=int, default=600, help="certificates per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per store and count")
    parser.add_argument(
        "--synchronous-commit", default="on", choices=("on", "off"), help="PostgreSQL's mode"
    )
    parser.add_argument(
        "--link",
        default="tcp",
        choices=("tcp", "socket"),
        help="how the server reaches PostgreSQL: TCP on loopback, or the cluster's Unix socket",
    )
    parser.add_argument("--json", help="also write every figure to this file")
    opts = parser.parse_args(argv)
    counts = sorted({int(n) for n in opts.tenants.split(",") if n})
    if not counts or counts[0] < 1 or counts[-1] > MAX_TENANTS:
        parser.error(f"--tenants are 1 to {MAX_TENANTS}")
    backends = [b for b in opts.backends.split(",") if b]
    print(f"{os.cpu_count()} CPUs; {opts.clients} clients, {opts.certs} certificates a run")

    results: list[dict[str, Any]] = []
    cluster = (
        start_throwaway_cluster(in_memory=False, durable=True) if "postgres" in backends else None
    )
    try:
        with tempfile.TemporaryDirectory(prefix="acme-stores-") as scratch:
            bench = Bench(Path(scratch))
            bench.dns_port = bench.free_port(udp_too=True)
            bench.http01_port = bench.free_port()
            with dns_stub(bench):
                for backend in backends:
                    dsn = ""
                    if backend == "postgres":
                        assert cluster is not None
                        dsn = cluster.fresh_database("acme")
                        if opts.link == "socket":
                            dsn = socket_dsn(dsn, cluster.data_dir, cluster.port)
                        asyncio.run(set_synchronous_commit(dsn, opts.synchronous_commit))
                    results += measure_store(bench, backend, dsn, counts, opts)
    finally:
        if cluster is not None:
            cluster.close()

    summary = summarize(results)
    print()
    print(table(summary))
    if opts.json:
        Path(opts.json).write_text(json.dumps({"runs": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
