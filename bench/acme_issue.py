#!/usr/bin/env python3
"""ACME issuance load generator: N concurrent clients through the whole RFC 8555 flow.

Each client owns an account (RFC 8555 §7.3, optionally bound by EAB, §7.3.4) and
issues certificates for random names one after another (§7.4), proving control
with http-01 (§8.3) through a responder this process runs on loopback. The run
is bounded by a certificate count and a duration, and stops by itself when the
server makes no progress. It prints figures and never fails on time. Given
several directory URLs (tenants of one server, say), the clients take them in
turn, so client i uses directory i modulo their number.

    bench/acme_issue.py https://127.0.0.1:14000/dir --clients 16 --certs 500
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from _acme_client import AcmeClient, BenchError, ExternalAccount, Issued, PollPolicy
from _figures import Tally, render, summarise
from aiohttp import web
from josepy.b64 import b64decode

logger = logging.getLogger(__name__)

USER_AGENT = "acme-mt-bench/0.1"
DEFAULT_CERTS = 100
MAX_CERTS = 1_000_000
MAX_DURATION = 600.0
WATCH_PERIOD = 0.2

# What a failed issuance may raise; anything else is a bug in the generator.
ISSUE_ERRORS = (BenchError, aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError)


@dataclass
class Run:
    """Shared state of one run: tickets handed out, the start barrier and the progress clock."""

    clients: int
    certs: int
    duration: float
    max_errors: int
    tally: Tally = field(default_factory=Tally)
    started: int = 0
    arrived: int = 0
    begin: float = field(default_factory=time.perf_counter)
    go: float = 0.0
    cpu_at_go: float = 0.0
    issue_errors: int = 0
    last_progress: float = field(default_factory=time.perf_counter)
    last_done: float = 0.0
    go_event: asyncio.Event = field(default_factory=asyncio.Event)

    def arrive(self) -> None:
        """Count a client whose account step is over; the last one starts the clock."""
        self.arrived += 1
        self.last_progress = time.perf_counter()
        if self.arrived == self.clients:
            self.go = self.last_progress
            self.cpu_at_go = time.process_time()
            self.go_event.set()

    def take_ticket(self) -> bool:
        """Whether one more order may start within the count, time and error bounds."""
        if self.started >= self.certs or self.tally.error_count >= self.max_errors:
            return False
        if time.perf_counter() - self.go >= self.duration:
            return False
        self.started += 1
        return True

    def done(self, issued: Issued) -> None:
        """Record a finished certificate."""
        self.tally.issued.append(issued)
        self.last_progress = self.last_done = time.perf_counter()

    def failed(self, error: Exception, *, account: bool = False) -> None:
        """Record a failed issuance or account; the first of each kind is logged."""
        kind = getattr(error, "kind", type(error).__name__)
        kind = f"account:{kind}" if account else kind
        if kind not in self.tally.errors:
            logger.warning("first %s error: %s", kind, error)
        self.tally.errors[kind] += 1
        self.issue_errors += 0 if account else 1
        self.last_progress = time.perf_counter()


def challenge_app(board: MutableMapping[str, str]) -> web.Application:
    """Serve every client's key authorizations at the RFC 8555 §8.3 path."""

    async def answer(request: web.Request) -> web.Response:
        key_authorization = board.get(request.match_info["token"])
        if key_authorization is None:
            raise web.HTTPNotFound()
        body = key_authorization.encode()
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/.well-known/acme-challenge/{token}", answer)
    return app


async def client_task(
    run: Run,
    opts: argparse.Namespace,
    board: MutableMapping[str, str],
    tls: ssl.SSLContext | bool,
    directory_url: str,
) -> None:
    """One ACME client: open an account, wait for the others, then issue while tickets last."""
    polls = PollPolicy(opts.poll_interval, not opts.ignore_retry_after, opts.max_polls)
    timeout = aiohttp.ClientTimeout(total=opts.request_timeout)
    connector = aiohttp.TCPConnector(ssl=tls, limit=4)
    headers = {"User-Agent": USER_AGENT}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers
    ) as session:
        try:
            directory = await read_directory(session, directory_url)
            client = AcmeClient(session, directory, board, polls)
            await client.register(external_account(opts))
            run.tally.accounts += 1
        except ISSUE_ERRORS as error:
            run.failed(error, account=True)
            return
        finally:
            run.arrive()

        await run.go_event.wait()
        while run.take_ticket():
            name = f"{secrets.token_hex(8)}.{opts.domain}"
            try:
                issued = await client.issue(name)
            except ISSUE_ERRORS as error:
                run.failed(error)
            else:
                run.done(issued)


async def read_directory(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """GET the directory (RFC 8555 §7.1.1), the one resource read without a JWS."""
    async with session.get(url) as response:
        response.raise_for_status()
        directory = await response.json(content_type=None)
    if not isinstance(directory, dict):
        raise BenchError("directory is not a JSON object")
    return directory


def external_account(opts: argparse.Namespace) -> ExternalAccount | None:
    """The EAB key from the command line; the HMAC key arrives base64url-encoded."""
    if not opts.eab_kid:
        return None
    return ExternalAccount(opts.eab_kid, b64decode(opts.eab_hmac_key))


async def watch(run: Run, tasks: list[asyncio.Task[None]], stall: float) -> bool:
    """Wait for the clients; cancel them all when nothing finishes for `stall` seconds.

    A run whose last orders outlive its duration by twice that counts as stalled too.
    """
    hard_stop = run.begin + 2 * stall + run.duration
    stalled = False
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=WATCH_PERIOD)
        now = time.perf_counter()
        if pending and (now - run.last_progress > stall or now > hard_stop):
            stalled = True
            break
    for task in pending:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            logger.error("a client stopped on an unexpected error: %r", outcome)
    return stalled


async def measure(opts: argparse.Namespace) -> dict[str, Any]:
    """Run the clients against the server and return the figures."""
    tls = tls_context(opts)
    run = Run(opts.clients, opts.certs, opts.duration, opts.max_errors)
    board: dict[str, str] = {}
    runner = web.AppRunner(challenge_app(board), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, opts.http01_address, opts.http01_port).start()
    except OSError as error:
        await runner.cleanup()
        raise SystemExit(f"cannot serve http-01 on port {opts.http01_port}: {error}") from error
    try:
        urls = opts.directory
        tasks = [
            asyncio.create_task(client_task(run, opts, board, tls, urls[i % len(urls)]))
            for i in range(opts.clients)
        ]
        stalled = await watch(run, tasks, opts.stall_timeout)
    finally:
        await runner.cleanup()

    go = run.go or time.perf_counter()
    end = run.last_done if run.last_done > go else time.perf_counter()
    return summarise(
        run.tally,
        server=" ".join(opts.directory),
        clients=opts.clients,
        abandoned=run.started - len(run.tally.issued) - run.issue_errors,
        elapsed=end - go,
        accounts_seconds=go - run.begin,
        cpu_seconds=time.process_time() - run.cpu_at_go if run.go else 0.0,
        stalled=stalled,
        stall_timeout=opts.stall_timeout,
    )


def tls_context(opts: argparse.Namespace) -> ssl.SSLContext | bool:
    """Trust the system store, a private root from --ca-file, or nothing with --insecure."""
    if opts.insecure:
        logger.warning("TLS verification is off")
        return False
    return ssl.create_default_context(cafile=opts.ca_file)


def check_loopback(url: str) -> None:
    """Refuse to aim load at anything but this machine, unless told to."""
    host = urlsplit(url).hostname or ""
    port = urlsplit(url).port or 443
    try:
        addresses = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as error:
        raise SystemExit(f"cannot resolve {host}: {error}") from error
    for *_, address in addresses:
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise SystemExit(f"{host} resolves to {address[0]}, not loopback (--allow-remote)")


def loopback_address(value: str) -> str:
    """An argparse type: an IP address on loopback."""
    if not ipaddress.ip_address(value).is_loopback:
        raise argparse.ArgumentTypeError(f"{value} is not a loopback address")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --certs and --duration bound the run, whichever comes first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("directory", metavar="DIRECTORY_URL", nargs="+", help="ACME directory URLs, taken in turn")
    add("--clients", type=int, default=16, help="concurrent clients, one account each")
    add("--certs", type=int, help=f"certificates in total (default {DEFAULT_CERTS})")
    add("--duration", type=float, help=f"seconds to keep ordering (at most {MAX_DURATION:g})")
    add("--max-errors", type=int, default=50, help="stop ordering after this many errors")
    add("--stall-timeout", type=float, default=10.0, help="stop when nothing finishes this long")
    add("--poll-interval", type=float, default=0.05, help="poll delay without Retry-After")
    add("--ignore-retry-after", action="store_true", help="always poll at --poll-interval")
    add("--max-polls", type=int, default=400, help="polls per authorization or order")
    add("--request-timeout", type=float, default=30.0, help="seconds per HTTP request")
    add("--http01-port", type=int, default=5002, help="port of the http-01 responder")
    add("--http01-address", type=loopback_address, default="127.0.0.1")
    add("--domain", default="bench.test", help="parent domain of the random names")
    add("--eab-kid", help="external account binding key id")
    add("--eab-hmac-key", help="external account binding HMAC key, base64url (HS256)")
    add("--ca-file", help="PEM file of roots to trust for the server's TLS")
    add("--insecure", action="store_true", help="skip TLS verification")
    add("--allow-remote", action="store_true", help="allow a server off this machine")
    add("--json", action="store_true", help="also print the figures as one JSON object")
    add("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    add("-v", "--verbose", action="store_true")
    opts = parser.parse_args(argv)

    if bool(opts.eab_kid) != bool(opts.eab_hmac_key):
        parser.error("--eab-kid and --eab-hmac-key go together")
    if opts.clients < 1:
        parser.error("--clients must be at least 1")
    if opts.certs is None:
        opts.certs = MAX_CERTS if opts.duration else DEFAULT_CERTS
    opts.certs = min(opts.certs, MAX_CERTS)
    opts.duration = min(opts.duration or MAX_DURATION, MAX_DURATION)
    return opts


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures; exit 1 only when no account could be opened."""
    opts = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if opts.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not opts.allow_remote:
        for url in opts.directory:
            check_loopback(url)

    loop_factory = None
    if not opts.no_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            logger.debug("uvloop not installed; using asyncio's loop")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        figures = runner.run(measure(opts))

    print(render(figures))
    if opts.json:
        print(json.dumps(figures, sort_keys=True))
    return 0 if figures["accounts"] else 1


if __name__ == "__main__":
    sys.exit(main())
