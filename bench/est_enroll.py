#!/usr/bin/env python3
"""EST simpleenroll load generator (RFC 7030 §4.2.1): enrollments per second.

N concurrent clients, each on its own keep-alive TLS connection with an
enrollment credential over HTTP Basic (§3.2.3), POST base64 PKCS#10 requests
for random names and check that each answer is a certs-only PKCS#7 holding
one certificate for the requested key. CSRs (ECDSA P-256 or RSA-2048) are made
before the clock starts, so the generator spends its time on TLS and HTTP only.

With no ``--url`` it starts its own ``acme-mt serve`` on free loopback ports in
a temporary directory, makes a tenant and a credential, and also reports the
server's CPU time per certificate. Runs are bounded by a certificate count and
a duration, start after ``--warmup`` untimed enrollments on one connection,
stop when nothing finishes for ``--stall-timeout`` seconds, and never pass or
fail on time.

    bench/est_enroll.py --clients 1,16 --key-types ec-p256,rsa-2048 --certs 400
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import secrets
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from _procs import cpu_seconds, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
TENANT = "bench-est"
POLICY = 'require_eab = false\nkey_types = ["ec-p256", "rsa-2048"]\n'
KEYS_PER_TYPE = 16
MAX_CERTS = 100_000
MAX_DURATION = 600.0
WATCH_PERIOD = 0.2


@dataclass(frozen=True)
class Target:
    """Where to enroll and with what: the label URL, the Basic header and TLS trust."""

    url: str
    authorization: str
    tls: ssl.SSLContext
    server_pid: int | None = None


@dataclass
class Run:
    """One run's tickets, results and progress clock."""

    certs: int
    duration: float
    max_errors: int
    started: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    go: float = field(default_factory=time.perf_counter)
    last_progress: float = field(default_factory=time.perf_counter)

    def take_ticket(self) -> int | None:
        """The index of the next request to send, or None when the run is over."""
        if self.started >= self.certs or sum(self.errors.values()) >= self.max_errors:
            return None
        if time.perf_counter() - self.go >= self.duration:
            return None
        self.started += 1
        return self.started - 1

    def failed(self, kind: str, detail: str) -> None:
        if kind not in self.errors:
            logger.warning("first %s error: %s", kind, detail)
        self.errors[kind] += 1
        self.last_progress = time.perf_counter()


def make_requests(key_type: str, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` (base64 CSR, SPKI DER) pairs for random names, from a small pool of keys."""
    keys: list[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = [
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "ec-p256"
        else rsa.generate_private_key(65537, 2048)
        for _ in range(min(KEYS_PER_TYPE, count))
    ]
    requests = []
    for index in range(count):
        key = keys[index % len(keys)]
        name = f"{secrets.token_hex(8)}.bench.test"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        requests.append((base64.b64encode(csr.public_bytes(serialization.Encoding.DER)), spki))
    return requests


async def client_task(run: Run, target: Target, requests: list[tuple[bytes, bytes]]) -> None:
    """One EST client on one keep-alive connection, enrolling while tickets last."""
    headers = {"Authorization": target.authorization, "Content-Type": "application/pkcs10"}
    connector = aiohttp.TCPConnector(ssl=target.tls, limit=1)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while (ticket := run.take_ticket()) is not None:
            body, spki = requests[ticket]
            started = time.perf_counter()
            try:
                async with session.post(
                    f"{target.url}/simpleenroll", data=body, headers=headers
                ) as resp:
                    answer = await resp.read()
                    if resp.status != 200:
                        run.failed(f"http-{resp.status}", answer[:200].decode(errors="replace"))
                        continue
                [certificate] = pkcs7.load_der_pkcs7_certificates(base64.b64decode(answer))
                issued = certificate.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                if issued != spki:
                    run.failed("wrong-key", "the certificate is for another key")
                    continue
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                run.failed(type(error).__name__, str(error))
                continue
            run.latencies.append(time.perf_counter() - started)
            run.last_progress = time.perf_counter()


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank, so a percentile is always a latency that was seen."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def server_cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU of the server and its workers, or None when unknown."""
    return None if pid is None else cpu_seconds(pid)


async def measure(
    target: Target, key_type: str, clients: int, opts: argparse.Namespace
) -> dict[str, Any]:
    """Enroll with ``clients`` concurrent clients and return the figures of the run."""
    requests = make_requests(key_type, opts.certs)
    if opts.warmup:
        warmup = Run(opts.warmup, opts.duration, opts.max_errors)
        await client_task(warmup, target, make_requests(key_type, opts.warmup))
        if warmup.errors:
            logger.warning("warm-up errors: %s", dict(warmup.errors))
    load_before = round(os.getloadavg()[0], 2)
    run = Run(opts.certs, opts.duration, opts.max_errors)
    server_cpu = server_cpu_seconds(target.server_pid)
    own_cpu = time.process_time()
    run.go = run.last_progress = time.perf_counter()
    tasks = [asyncio.create_task(client_task(run, target, requests)) for _ in range(clients)]
    stalled = False
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=WATCH_PERIOD)
        if pending and time.perf_counter() - run.last_progress > opts.stall_timeout:
            stalled = True
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            break
    elapsed = time.perf_counter() - run.go
    count = len(run.latencies)
    server_after = server_cpu_seconds(target.server_pid)

    def per_cert_ms(seconds: float | None) -> float | None:
        return round(seconds * 1000 / count, 2) if count and seconds is not None else None

    return {
        "key_type": key_type,
        "clients": clients,
        "certificates": count,
        "errors": dict(run.errors),
        "elapsed_seconds": round(elapsed, 3),
        "certificates_per_second": round(count / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": {
            name: round(percentile(run.latencies, q) * 1000, 1)
            for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
        }
        if count
        else None,
        "server_cpu_ms_per_certificate": per_cert_ms(
            None if server_cpu is None or server_after is None else server_after - server_cpu
        ),
        "generator_cpu_ms_per_certificate": per_cert_ms(time.process_time() - own_cpu),
        "load_before": load_before,
        "stalled": stalled,
    }


@contextlib.contextmanager
def own_server(keep: Path | None) -> Iterator[Target]:
    """Start ``acme-mt serve`` on loopback, make a tenant and a credential, stop it after."""
    with contextlib.ExitStack() as stack:
        work = keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="est-bench-")))
        https_port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACME_MT_")}
        env.update(
            ACME_MT_SERVER_HTTPS_LISTEN=f"127.0.0.1:{https_port}",
            ACME_MT_SERVER_HTTP_LISTEN=f"127.0.0.1:{http_port}",
            ACME_MT_SERVER_HTTPS_URL=f"https://localhost:{https_port}",
            ACME_MT_SERVER_HTTP_URL=f"http://localhost:{http_port}",
        )
        data = work / "data"
        acme_mt = [sys.executable, "-m", "acme_mt"]
        log = stack.enter_context(open(work / "server.log", "ab"))
        process = subprocess.Popen(
            [*acme_mt, "serve", "--data-dir", str(data)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, process)
        root_pem = _wait_for_root(f"http://127.0.0.1:{http_port}/root.pem", process)
        (work / "policy.toml").write_text(POLICY)

        def cli(*args: str) -> dict[str, Any]:
            done = subprocess.run(
                [*acme_mt, *args, "--data-dir", str(data), "--json"],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            )
            result: dict[str, Any] = json.loads(done.stdout)
            return result

        cli("tenant", "create", TENANT, "--policy", str(work / "policy.toml"))
        credential = cli("est", "credential", "create", TENANT)
        tls = ssl.create_default_context(cadata=root_pem.decode())
        yield Target(
            url=f"https://localhost:{https_port}/.well-known/est/{TENANT}",
            authorization=aiohttp.encode_basic_auth(credential["username"], credential["password"]),
            tls=tls,
            server_pid=process.pid,
        )


def _wait_for_root(url: str, process: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("acme-mt exited during start-up; see its server.log")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: bytes = resp.read()
                return body
        except OSError:
            time.sleep(0.2)
    raise SystemExit("acme-mt did not start within 60 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def given_target(opts: argparse.Namespace) -> Target:
    """A server someone else runs: ``--url`` of the label, credential from the environment."""
    host = urlsplit(opts.url).hostname or ""
    if host not in ("localhost", "127.0.0.1", "::1") and not opts.allow_remote:
        raise SystemExit(f"{host} is not loopback; pass --allow-remote to measure it")
    username = os.environ.get("EST_BENCH_USERNAME")
    password = os.environ.get("EST_BENCH_PASSWORD")
    if not username or not password:
        raise SystemExit("set EST_BENCH_USERNAME and EST_BENCH_PASSWORD for --url")
    tls = ssl.create_default_context(cafile=opts.ca_file)
    return Target(opts.url.rstrip("/"), aiohttp.encode_basic_auth(username, password), tls)


def render(figures: dict[str, Any]) -> str:
    latency = figures["latency_ms"] or {}
    errors = ", ".join(f"{k} {n}" for k, n in figures["errors"].items()) or "0"
    return (
        f"{figures['key_type']:8} clients {figures['clients']:3}  "
        f"{figures['certificates']:6} certs in {figures['elapsed_seconds']:7.2f} s  "
        f"{figures['certificates_per_second'] or 0:7.1f}/s  "
        f"p50 {latency.get('p50', '-')} ms  p99 {latency.get('p99', '-')} ms  "
        f"server CPU {figures['server_cpu_ms_per_certificate'] or '-'} ms/cert  "
        f"generator CPU {figures['generator_cpu_ms_per_certificate'] or '-'} ms/cert  "
        f"errors {errors}  load {figures['load_before']}"
        + ("  STALLED" if figures["stalled"] else "")
    )


async def run_all(opts: argparse.Namespace, target: Target) -> list[dict[str, Any]]:
    results = []
    for key_type in opts.key_types.split(","):
        for clients in (int(c) for c in opts.clients.split(",")):
            figures = await measure(target, key_type, clients, opts)
            print(render(figures), flush=True)
            results.append(figures)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", help="EST label URL, e.g. https://localhost:8443/.well-known/est/t"
    )
    parser.add_argument("--ca-file", help="trust anchor for --url")
    parser.add_argument("--allow-remote", action="store_true")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    parser.add_argument("--key-types", default="ec-p256,rsa-2048", help="ec-p256 and/or rsa-2048")
    parser.add_argument("--certs", type=int, default=400, help="certificates per run")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run, at most")
    parser.add_argument("--warmup", type=int, default=20, help="untimed enrollments per run")
    parser.add_argument("--max-errors", type=int, default=50)
    parser.add_argument("--stall-timeout", type=float, default=10.0)
    parser.add_argument("--keep", type=Path, help="keep the server's directory and log here")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    opts = parser.parse_args(argv)
    opts.certs = max(1, min(opts.certs, MAX_CERTS))
    opts.duration = max(1.0, min(opts.duration, MAX_DURATION))
    opts.warmup = max(0, min(opts.warmup, 1000))
    if not set(opts.key_types.split(",")) <= {"ec-p256", "rsa-2048"}:
        parser.error("--key-types takes ec-p256 and rsa-2048")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    if opts.url:
        results = asyncio.run(run_all(opts, given_target(opts)))
    else:
        if opts.keep:
            opts.keep.mkdir(parents=True, exist_ok=True)
        with own_server(opts.keep) as target:
            results = asyncio.run(run_all(opts, target))
    if opts.json:
        opts.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
