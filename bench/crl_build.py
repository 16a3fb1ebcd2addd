#!/usr/bin/env python3
"""CRL build-and-sign benchmark: how long a tenant CA takes to sign its CRLs, and how big they are.

Synthetic revoked certificate records (random 127-bit serials, revocation
dates in the last 90 days, RFC 5280 §5.3.1 reasons the server publishes, one
in six unspecified) go through the server's own CRL builder
(``acme_mt.issuance.crl``: drafts signed through ``acme_mt.issuance.signer``)
with a P-256 CA key in memory. Each size runs once unsharded and once split
into shards as the server splits them (``shard_for_serial``), each
measurement in a fresh process so its peak memory is its own. It prints
figures and never fails on time.

    bench/crl_build.py                          10k, 100k and 1M entries; 1 and 16 shards
    bench/crl_build.py --sizes 10000 --shards 1 4 16 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from acme_mt.issuance import new_serial, shard_for_serial
from acme_mt.issuance.crl import CrlDraft, sign_crls
from acme_mt.models import CertificateRecord

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_SHARDS = (1, 16)
MAX_ENTRIES = 2_000_000
#: Repeats below this size; larger sizes are measured once (about a minute each).
REPEAT_BELOW = 500_000
CHILD_TIMEOUT = 900
REASONS = (0, 1, 3, 4, 5, 9)
URL = "http://localhost:8080/bench/crl"


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def synthetic_records(count: int, shards: int, seed: int) -> list[CertificateRecord]:
    """Revoked records as the store returns them (no DER), spread over ``shards``."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    records = []
    for _ in range(count):
        serial = new_serial()
        revoked_at = now - timedelta(seconds=rng.randrange(90 * 86400))
        records.append(
            CertificateRecord(
                serial=format(serial, "x"),
                account_id=None,
                order_id=None,
                status="revoked",
                not_before=revoked_at - timedelta(days=10),
                not_after=revoked_at + timedelta(days=80),
                created=revoked_at - timedelta(days=10),
                revoked_at=revoked_at,
                revocation_reason=rng.choice(REASONS),
                shard=shard_for_serial(serial, shards),
            )
        )
    return records


async def sign_once(
    key: ec.EllipticCurvePrivateKey,
    certificate: x509.Certificate,
    records: list[CertificateRecord],
    shards: int,
) -> dict[str, Any]:
    """Build and sign one CRL per shard, one after another, as a tenant's worker does."""
    grouped: list[list[CertificateRecord]] = [[] for _ in range(shards)]
    for record in records:
        grouped[record.shard].append(record)
    now = datetime.now(UTC).replace(microsecond=0)
    seconds: list[float] = []
    cpu: list[float] = []
    sizes: list[int] = []
    for shard, entries in enumerate(grouped):
        draft = CrlDraft(
            issuer=certificate,
            number=time.time_ns() // 1000,
            this_update=now,
            next_update=now + timedelta(hours=24),
            entries=entries,
            scope_url=f"{URL}/{shard}.crl",
            delta_url=f"{URL}/{shard}-delta.crl",
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        [crl] = await sign_crls([draft], key)
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        sizes.append(len(crl.public_bytes(Encoding.DER)))
        del crl
    return {"seconds": seconds, "cpu": cpu, "sizes": sizes}


def measure_child(entries: int, shards: int, repeat: int) -> dict[str, Any]:
    """One (entries, shards) point, in this process: the median of ``repeat`` runs."""
    key, certificate = make_ca()
    generated = time.perf_counter()
    records = synthetic_records(entries, shards, seed=entries * 31 + shards)
    generated = time.perf_counter() - generated
    runs = [asyncio.run(sign_once(key, certificate, records, shards)) for _ in range(repeat)]
    totals = [sum(run["seconds"]) for run in runs]
    best = runs[totals.index(statistics.median_low(totals))]
    sizes = best["sizes"]
    return {
        "entries": entries,
        "shards": shards,
        "runs": repeat,
        "seconds_total": round(sum(best["seconds"]), 3),
        "cpu_seconds_total": round(sum(best["cpu"]), 3),
        "seconds_largest_shard": round(max(best["seconds"]), 3),
        "bytes_total": sum(sizes),
        "bytes_largest_shard": max(sizes),
        "bytes_per_entry": round(sum(sizes) / entries, 1),
        "entries_per_second": round(entries / sum(best["seconds"])),
        "records_seconds": round(generated, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_point(entries: int, shards: int) -> dict[str, Any]:
    repeat = 3 if entries < REPEAT_BELOW else 1
    command = [sys.executable, __file__, "--child", str(entries), str(shards), str(repeat)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def render(points: list[dict[str, Any]]) -> str:
    lines = [
        "  entries  shards  wall s (all / largest shard)  CPU s  size MB (all / largest)"
        "  B/entry  entries/s  peak RSS MB",
    ]
    for p in points:
        lines.append(
            f"{p['entries']:>9,}  {p['shards']:>6}  "
            f"{p['seconds_total']:>9.2f} / {p['seconds_largest_shard']:<17.2f}  "
            f"{p['cpu_seconds_total']:>5.2f}  "
            f"{p['bytes_total'] / 1e6:>9.2f} / {p['bytes_largest_shard'] / 1e6:<9.2f}   "
            f"{p['bytes_per_entry']:>7}  {p['entries_per_second']:>9,}  {p['peak_rss_mb']:>11,}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--shards", type=int, nargs="+", default=list(DEFAULT_SHARDS))
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--child", type=int, nargs=3, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    for size in opts.sizes:
        if not 1 <= size <= MAX_ENTRIES:
            parser.error(f"sizes must be 1 to {MAX_ENTRIES:,}")
    for shards in opts.shards:
        if not 1 <= shards <= 1024:
            parser.error("shards must be 1 to 1024")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.child:
        print(json.dumps(measure_child(*opts.child)))
        return 0
    points = []
    for size in opts.sizes:
        for shards in opts.shards:
            point = run_point(size, shards)
            points.append(point)
            print(
                f"measured {size:,} entries in {shards} shard(s): {point['seconds_total']} s",
                file=sys.stderr,
                flush=True,
            )
    print(render(points))
    if opts.json:
        print(json.dumps(points, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
