#!/usr/bin/env python3
"""Side-by-side ACME issuance figures: Pebble and acme-mt under the same load.

For each server and each client count it starts the server afresh on free
loopback ports, points its http-01 validation (RFC 8555 §8.3) at the load
generator's responder through the DNS stub, runs bench/acme_issue.py against
its directory, and stops it. A server that cannot run here is skipped with a
message. Adding a server is one context manager in SERVERS.

    .venv/bin/python bench/run_pebble.py --clients 1,16 --certs 500
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import cpu_seconds
from _tls import make_localhost_tls
from dnslib import DNSRecord

logger = logging.getLogger(__name__)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY")
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
STARTUP_SECONDS = 60.0


class ServerUnavailable(Exception):
    """The server cannot be started on this machine (yet); its runs are skipped."""


@dataclass(frozen=True)
class Target:
    """A running ACME server, as the load generator needs to see it."""

    directory: str
    ca_file: Path
    pid: int = 0


@dataclass
class Bench:
    """What all servers share: a scratch directory, the DNS stub and the http-01 port."""

    work: Path
    dns_port: int = 0
    http01_port: int = 0
    taken: set[int] = field(default_factory=set)

    def free_port(self, *, udp_too: bool = False) -> int:
        """A loopback port nobody listens on, never handed out twice in one run."""
        for _ in range(50):
            with socket.socket() as tcp:
                tcp.bind(("127.0.0.1", 0))
                port = int(tcp.getsockname()[1])
                if port in self.taken:
                    continue
                if udp_too and not _udp_free(port):
                    continue
            self.taken.add(port)
            return port
        raise RuntimeError("no free loopback port found")


ServerFactory = Callable[[Bench, Path], AbstractContextManager[Target]]


@contextmanager
def pebble(bench: Bench, run_dir: Path) -> Iterator[Target]:
    """Let's Encrypt's test server, with its sleeps and random nonce rejection off."""
    if not Path("/usr/bin/pebble").exists():
        raise ServerUnavailable("/usr/bin/pebble is missing (apt-get install pebble)")
    root, cert, key = make_localhost_tls(run_dir)
    port = bench.free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{bench.free_port()}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": bench.http01_port,
            "tlsPort": bench.free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    config_file = run_dir / "pebble-config.json"
    config_file.write_text(json.dumps(config, indent=2))

    command = [
        "/usr/bin/pebble",
        "-config",
        str(config_file),
        "-dnsserver",
        f"127.0.0.1:{bench.dns_port}",
    ]
    directory = f"https://127.0.0.1:{port}/dir"
    with background(command, run_dir / "pebble.log", PEBBLE_ENV) as process:
        wait_for(directory, process, root)
        yield Target(directory, root, process.pid)


def acme_mt_env(bench: Bench, https_port: int, http_port: int) -> dict[str, str]:
    """Settings that put ``acme-mt serve`` on loopback, validating through the bench."""
    return {
        "ACME_MT_VALIDATION_HTTP01_PORT": str(bench.http01_port),
        "ACME_MT_VALIDATION_DNS_RESOLVER": f"127.0.0.1:{bench.dns_port}",
        "ACME_MT_SERVER_HTTPS_LISTEN": f"127.0.0.1:{https_port}",
        "ACME_MT_SERVER_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "ACME_MT_SERVER_HTTPS_URL": f"https://localhost:{https_port}",
        "ACME_MT_SERVER_HTTP_URL": f"http://localhost:{http_port}",
    }


@contextmanager
def acme_mt(bench: Bench, run_dir: Path) -> Iterator[Target]:
    """Our server with its embedded back ends and a fresh data directory."""
    command = acme_mt_command()
    if command is None:
        raise ServerUnavailable("acme-mt is not runnable yet (no `acme-mt serve`)")
    https_port, http_port = bench.free_port(), bench.free_port()
    env = acme_mt_env(bench, https_port, http_port)
    command = [*command, "serve", "--data-dir", str(run_dir / "data")]
    with background(command, run_dir / "acme-mt.log", env) as process:
        root = run_dir / "root.pem"
        root.write_bytes(wait_for(f"http://127.0.0.1:{http_port}/root.pem", process))
        directory = f"https://localhost:{https_port}/default/acme/directory"
        wait_for(directory, process, root)
        yield Target(directory, root, process.pid)


SERVERS: dict[str, ServerFactory] = {"pebble": pebble, "acme-mt": acme_mt}


def acme_mt_command() -> list[str] | None:
    """How to start acme-mt here, or None while it cannot serve yet."""
    script = Path(sys.executable).parent / "acme-mt"
    candidates = [[str(script)]] if script.exists() else []
    candidates.append([sys.executable, "-m", "acme_mt"])
    for command in candidates:
        try:
            probe = subprocess.run(
                [*command, "serve", "--help"],
                capture_output=True,
                cwd=REPO,
                env=loopback_env({}),
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return command
    return None


def loopback_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for child processes, with proxies removed so traffic stays local."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env.update(extra)
    return env


@contextmanager
def background(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server in the background with its output in `log`; stop it on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=loopback_env(env), cwd=REPO
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_for(url: str, process: subprocess.Popen[bytes], ca_file: Path | None = None) -> bytes:
    """Fetch `url` once the server answers it, giving up after STARTUP_SECONDS."""
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(f"server exited with {process.returncode} before answering")
        try:
            with opener.open(url, timeout=2) as response:
                body: bytes = response.read()
                return body
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise ServerUnavailable(f"{url} did not answer within {STARTUP_SECONDS:g} s")


@contextmanager
def dns_stub(bench: Bench) -> Iterator[None]:
    """Run bench/dns_stub.py on the bench's DNS port until the block ends."""
    command = [sys.executable, str(BENCH / "dns_stub.py"), "--port", str(bench.dns_port)]
    with background(command, bench.work / "dns.log", {}) as process:
        probe = DNSRecord.question("probe.bench.test")
        for _ in range(100):
            if process.poll() is not None:
                raise RuntimeError("the DNS stub exited; see dns.log")
            try:
                probe.send("127.0.0.1", bench.dns_port, timeout=0.2)
                break
            except OSError:
                time.sleep(0.05)
        yield


def run_generator(
    target: Target, bench: Bench, clients: int, opts: argparse.Namespace
) -> dict[str, Any] | None:
    """Run one load generator process and return its figures, or None if it printed none."""
    command = [
        sys.executable,
        str(BENCH / "acme_issue.py"),
        target.directory,
        "--clients", str(clients),
        "--certs", str(opts.certs),
        "--http01-port", str(bench.http01_port),
        "--ca-file", str(target.ca_file),
        "--stall-timeout", str(opts.stall_timeout),
        "--json",
    ]  # fmt: skip
    if opts.duration:
        command += ["--duration", str(opts.duration)]
    if opts.poll_interval is not None:
        command += ["--poll-interval", str(opts.poll_interval)]
    limit = (opts.duration or 600.0) + 4 * opts.stall_timeout + 60
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=limit, env=loopback_env({})
        )
    except subprocess.TimeoutExpired:
        print(f"  generator did not finish within {limit:g} s; stopped")
        return None

    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(f"  {line}")
    for line in done.stderr.strip().splitlines()[-5:]:
        print(f"  ! {line}")
    try:
        figures: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        return None
    return figures


def measure(
    name: str, bench: Bench, clients: int, repeat: int, opts: argparse.Namespace
) -> list[dict[str, Any]]:
    """One server at one client count on a fresh server; a stalled run is tried again."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(1 + opts.stall_retries):
        run_dir = bench.work / f"{name}-{clients}-{repeat}-{attempt}"
        run_dir.mkdir(exist_ok=True)
        load = os.getloadavg()[0]
        print(f"== {name}, {clients} client(s), run {repeat + 1}, attempt {attempt + 1}, "
              f"load average {load:.2f}", flush=True)  # fmt: skip
        with SERVERS[name](bench, run_dir) as target:
            cpu_before = cpu_seconds(target.pid)
            figures = run_generator(target, bench, clients, opts)
            cpu_used = cpu_seconds(target.pid) - cpu_before
        if figures is None:
            print("  no figures; restarting the server", flush=True)
            continue
        figures["server_name"] = name
        # Accounts are opened inside the same window; 16 of them cost little.
        issued = max(figures["certificates"], 1)
        figures["server_cpu_ms_per_certificate"] = round(cpu_used / issued * 1000, 2)
        figures["load_average_before"] = round(load, 2)
        attempts.append(figures)
        if not figures["stalled"]:
            break
        print("  stalled; restarting the server", flush=True)
    return attempts


def table(results: list[dict[str, Any]]) -> str:
    """One line per run, for the README."""
    columns = [
        "server", "clients", "certs", "errors", "certs/s", "p50 ms", "p99 ms",
        "polls/cert", "server CPU ms/cert", "generator CPU ms/cert", "load before", "stalled",
    ]  # fmt: skip
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for f in results:
        cells = [
            f["server_name"], f["clients"], f["certificates"], f["errors"],
            f["certificates_per_second"], f["latency_ms"]["p50"], f["latency_ms"]["p99"],
            f["polls_per_certificate"]["total"], f["server_cpu_ms_per_certificate"],
            f["generator_cpu_ms_per_certificate"],
            f["load_average_before"], "yes" if f["stalled"] else "no",
        ]  # fmt: skip
        rows.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Measure every requested server at every client count and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="pebble,acme-mt", help="comma-separated names")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    parser.add_argument("--certs", type=int, default=500, help="certificates per run")
    parser.add_argument("--duration", type=float, help="seconds per run instead of --certs")
    parser.add_argument("--poll-interval", type=float, help="passed on to the generator")
    parser.add_argument("--stall-timeout", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per server and count")
    parser.add_argument("--stall-retries", type=int, default=1, help="fresh tries after a stall")
    parser.add_argument("--json", action="store_true", help="print all figures as JSON at the end")
    parser.add_argument("--keep", metavar="DIR", help="keep configs and server logs in DIR")
    opts = parser.parse_args(argv)
    names = [n for n in opts.servers.split(",") if n]
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; known: {sorted(SERVERS)}")
    counts = [int(n) for n in opts.clients.split(",") if n]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    python = platform.python_version()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {python}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="acme-bench-") as scratch:
        bench = Bench(Path(opts.keep or scratch))
        bench.work.mkdir(parents=True, exist_ok=True)
        bench.dns_port = bench.free_port(udp_too=True)
        bench.http01_port = bench.free_port()
        with dns_stub(bench):
            for name in names:
                try:
                    for clients, repeat in itertools.product(counts, range(opts.repeat)):
                        results += measure(name, bench, clients, repeat, opts)
                except ServerUnavailable as reason:
                    print(f"== {name}: skipped: {reason}", flush=True)

    print()
    print(table(results))
    if opts.json:
        print(json.dumps(results, sort_keys=True))
    return 0


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
