#!/usr/bin/env python3
"""OCSP GET throughput under wrk: pre-signed responses (RFC 5019 §5) against the machine's ceiling.

The run prepares a data directory with N tenants (default 100), each with one
certificate issued straight through the tenant's issuer and store (no ACME:
this measures the responder), and starts two servers on loopback:
``acme-mt serve`` as shipped, and the ceiling, a bare aiohttp handler returning
fixed bytes of the same size on the same event loop (uvloop). Once every tenant's response
is pre-signed, wrk sends GET requests to each server in turn, all for one
tenant and then round-robin over every tenant, for several rounds, so that a
change in the machine's load falls on every configuration alike. It prints
requests per second (best and median run), latency percentiles, the server's
CPU time per request, and the ratio of each responder to the ceiling. It
prints figures and never fails on time.

    bench/ocsp_wrk.py                       100 tenants, 5 rounds of 5 s, 32 connections
    bench/ocsp_wrk.py --tenants 20 --rounds 3 --seconds 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _procs import cpu_seconds, free_port  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509 import ocsp  # noqa: E402

from acme_mt.app import open_services  # noqa: E402
from acme_mt.config import ServerSettings, Settings  # noqa: E402
from acme_mt.issuance import new_serial  # noqa: E402
from acme_mt.models import CertificateRecord, CertificateStatus, utcnow  # noqa: E402
from acme_mt.tenancy.context import TenantContext  # noqa: E402
from acme_mt.tenancy.lifecycle import onboard_tenant  # noqa: E402

logger = logging.getLogger(__name__)

MAX_SECONDS = 120
START_TIMEOUT = 180.0

_ROUND_ROBIN = """
paths = {%s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


async def _issue_one(tenant: TenantContext) -> x509.Certificate:
    """Record, sign and store one leaf the way the authority does."""
    now = utcnow().replace(microsecond=0)
    serial = new_serial()
    record = CertificateRecord(
        serial=format(serial, "x"),
        account_id=None,
        order_id=None,
        status=CertificateStatus.PENDING,
        not_before=now,
        not_after=now + timedelta(days=30),
        created=now,
        channel="est",
    )
    await tenant.store.insert_certificate(record)
    key = ec.generate_private_key(ec.SECP256R1())
    name = f"bench.{tenant.slug}.test"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    leaf = await tenant.issuer.issue_leaf(
        csr, [("dns", name)], record.not_before, record.not_after, serial, 0, True
    )
    der = leaf.public_bytes(serialization.Encoding.DER)
    await tenant.store.complete_issuance(None, replace(record, der=der, status="valid"))
    return leaf


async def prepare(data_dir: Path, count: int) -> list[str]:
    """Make ``count`` tenants with one certificate each; return their GET paths."""
    services = await open_services(Settings(server=ServerSettings(data_dir=str(data_dir))))
    paths = []
    try:
        for number in range(count):
            slug = f"bench-{number:03d}"
            await onboard_tenant(
                services.settings,
                services.registry,
                services.stores,
                services.keystore,
                services.provider,
                slug,
                {"require_eab": False},
            )
            tenant = await services.tenants.resolve(slug)
            assert tenant is not None
            leaf = await _issue_one(tenant)
            request = ocsp.OCSPRequestBuilder().add_certificate(
                leaf, tenant.issuer.certificate, hashes.SHA1()
            )
            der = request.build().public_bytes(serialization.Encoding.DER)
            paths.append(f"/{slug}/ocsp/{base64.b64encode(der).decode()}")
    finally:
        await services.close()
    return paths


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """``acme-mt serve`` on the embedded defaults, its plain listener on ``port``.

    One worker process, as the ceiling is one process: the ratio compares
    code, not process counts (``ACME_MT_SERVER_WORKERS`` in the environment
    overrides it).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACME_MT_")}
    env.update(
        ACME_MT_SERVER_HTTP_LISTEN=f"127.0.0.1:{port}",
        ACME_MT_SERVER_HTTP_URL=f"http://127.0.0.1:{port}",
        ACME_MT_SERVER_HTTPS_LISTEN=f"127.0.0.1:{free_port()}",
        ACME_MT_SERVER_WORKERS=os.environ.get("ACME_MT_SERVER_WORKERS", "1"),
    )
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - the process owns it
    command = [sys.executable, "-m", "acme_mt", "serve", "--data-dir", str(data_dir)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_presigned(base: str, paths: list[str], process: subprocess.Popen[bytes]) -> int:
    """Wait until every path answers a pre-signed response; return its size."""
    deadline = time.monotonic() + START_TIMEOUT
    size = 0
    for path in paths:
        while True:
            if process.poll() is not None:
                raise RuntimeError("the server exited while starting")
            if time.monotonic() > deadline:
                raise RuntimeError("responses were not pre-signed in time")
            try:
                with urllib.request.urlopen(base + path, timeout=5) as reply:
                    body = reply.read()
                    if reply.headers.get("ETag"):
                        size = len(body)
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
    return size


async def serve_bare(port: int, size: int) -> None:
    """The ceiling: a bare aiohttp handler returning ``size`` fixed bytes."""
    from aiohttp import web

    body = os.urandom(size)

    async def fixed(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/ocsp-response")

    app = web.Application()
    app.router.add_get("/{tail:.*}", fixed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def start_bare(port: int, size: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--serve-bare", str(port), str(size)]
    process = subprocess.Popen(command, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the bare server did not start")


_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, opts: argparse.Namespace, script: Path | None) -> dict[str, Any]:
    """One wrk run; requests per second, latency percentiles in ms, error counts."""
    command = ["wrk", "-t", str(opts.threads), "-c", str(opts.connections)]
    command += ["-d", f"{opts.seconds}s", "--latency", "--timeout", "5s"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=opts.seconds + 60
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    latency = {f"p{m[0]}": round(float(m[1]) * _UNITS[m[2]], 3) for m in _LATENCY.findall(output)}
    return {
        "requests_per_second": float(rate.group(1)) if rate else 0.0,
        "requests": int(count.group(1)) if count else 0,
        "latency_ms": latency,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


#: The measured configurations: (key, label, server, spread over every tenant).
CONFIGS = (
    ("one_tenant", "OCSP, one tenant", "serve", False),
    ("spread", "OCSP, spread over {n} tenants", "serve", True),
    ("bare", "bare aiohttp, one path", "bare", False),
    ("bare_spread", "bare aiohttp, {n} paths", "bare", True),
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best and the median run of one configuration, and its CPU time per request."""
    ordered = sorted(runs, key=lambda run: run["requests_per_second"])
    per_request = sorted(run["cpu_us_per_request"] for run in runs)
    return {
        "best": ordered[-1],
        "median": ordered[len(ordered) // 2],
        "runs": len(runs),
        "cpu_us_per_request": per_request[len(per_request) // 2],
    }


def measure(opts: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run every configuration in turn, round after round, so that a change in the
    machine's load falls on all of them alike."""
    data_dir = work / "data"
    paths = asyncio.run(prepare(data_dir, opts.tenants))
    script = work / "round_robin.lua"
    script.write_text(_ROUND_ROBIN % ", ".join(json.dumps(p) for p in paths))
    ports = {"serve": free_port(), "bare": free_port()}
    processes = [start_server(data_dir, ports["serve"])]
    try:
        size = wait_presigned(f"http://127.0.0.1:{ports['serve']}", paths, processes[0])
        processes.append(start_bare(ports["bare"], size))
        warm = replace_seconds(opts, 1)
        for port in ports.values():
            run_wrk(f"http://127.0.0.1:{port}{paths[0]}", warm, None)
        pids = dict(zip(ports, (process.pid for process in processes), strict=True))
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in CONFIGS}
        for _ in range(opts.rounds):
            for key, _label, server, spread in CONFIGS:
                base = f"http://127.0.0.1:{ports[server]}"
                url = base + "/" if spread else base + paths[0]
                before = cpu_seconds(pids[server])
                run = run_wrk(url, opts, script if spread else None)
                used = cpu_seconds(pids[server]) - before
                run["cpu_us_per_request"] = round(used / max(run["requests"], 1) * 1e6, 1)
                runs[key].append(run)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)

    figures: dict[str, Any] = {key: summarise(found) for key, found in runs.items()}
    figures["non_2xx"] = sum(run["non_2xx"] for found in runs.values() for run in found)
    for key in ("one_tenant", "spread"):
        bound = figures["bare_spread" if "spread" in key else "bare"]["cpu_us_per_request"]
        mine = figures[key]["cpu_us_per_request"]
        figures[f"ratio_{key}_cpu"] = round(bound / mine, 3) if mine else 0.0
    for key in ("one_tenant", "spread"):
        bound = figures["bare_spread" if "spread" in key else "bare"]
        for pick in ("best", "median"):
            top = bound[pick]["requests_per_second"]
            mine = figures[key][pick]["requests_per_second"]
            figures[f"ratio_{key}_{pick}"] = round(mine / top, 3) if top else 0.0
    figures.update(
        tenants=opts.tenants,
        response_bytes=size,
        connections=opts.connections,
        threads=opts.threads,
        seconds=opts.seconds,
        rounds=opts.rounds,
        cpus=os.cpu_count(),
        load_average=os.getloadavg()[0],
    )
    return figures


def replace_seconds(opts: argparse.Namespace, seconds: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(opts), "seconds": seconds})


def render(figures: dict[str, Any]) -> str:
    lines = [
        f"{figures['response_bytes']}-byte responses, wrk -t{figures['threads']} "
        f"-c{figures['connections']} -d{figures['seconds']}s, {figures['rounds']} rounds, "
        f"{figures['cpus']} CPUs, load average {figures['load_average']:.1f} at the end",
        f"{'':40} {'best req/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'median req/s':>12} "
        f"{'p99 ms':>7} {'CPU us/req':>10}",
    ]
    for key, label, _server, _spread in CONFIGS:
        best, median = figures[key]["best"], figures[key]["median"]
        lines.append(
            f"{label.format(n=figures['tenants']):40} {best['requests_per_second']:>10.0f} "
            f"{best['latency_ms'].get('p50', 0):>7.2f} {best['latency_ms'].get('p99', 0):>7.2f} "
            f"{median['requests_per_second']:>12.0f} {median['latency_ms'].get('p99', 0):>7.2f} "
            f"{figures[key]['cpu_us_per_request']:>10.1f}"
        )
    lines.append(f"non-2xx responses, all runs: {figures['non_2xx']}")
    for pick, title in (("best", "best"), ("median", "median"), ("cpu", "CPU per request")):
        one, spread = figures[f"ratio_one_tenant_{pick}"], figures[f"ratio_spread_{pick}"]
        lines.append(f"ratio to the ceiling ({title}): one tenant {one:.2f}, spread {spread:.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=100, help="tenants to spread over")
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each configuration")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--serve-bare", type=int, nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if not 1 <= opts.tenants <= 1000 or not 1 <= opts.seconds <= MAX_SECONDS:
        parser.error(f"--tenants is 1 to 1000 and --seconds 1 to {MAX_SECONDS}")
    if not 1 <= opts.rounds <= 20:
        parser.error("--rounds is 1 to 20")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.serve_bare:
        import uvloop

        uvloop.run(serve_bare(*opts.serve_bare))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="ocsp-bench-"))
    try:
        figures = measure(opts, work)
    finally:
        if opts.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(render(figures))
    if opts.json:
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
