#!/usr/bin/env python3
"""A DNS stub for benchmarks: every name has one A record, 127.0.0.1 (RFC 1035 §3.4.1).

ACME servers resolve the ordered names before they fetch http-01 answers
(RFC 8555 §8.3). Pointed at this stub, they reach the load generator's
responder on loopback for any random name. Every other query type gets an
empty NOERROR answer, so AAAA, CAA (RFC 8659) and TXT look-ups find nothing.
It listens on UDP and TCP, on loopback only, and exits after --lifetime seconds
or on SIGTERM/SIGINT.

    bench/dns_stub.py --port 8053
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from typing import Any

from dnslib import QTYPE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

logger = logging.getLogger(__name__)


class LoopbackResolver(BaseResolver):  # type: ignore[misc]
    """Answers A queries with one fixed loopback address so validation stays on this host."""

    def __init__(self, address: str, ttl: int) -> None:
        self._address = address
        self._ttl = ttl

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        """Build the reply for one query."""
        reply = request.reply()
        question = request.q
        if question.qtype == QTYPE.A:
            record = RR(question.qname, QTYPE.A, rdata=A(self._address), ttl=self._ttl)
            reply.add_answer(record)
        return reply


def loopback(value: str) -> str:
    """An argparse type: an IPv4 or IPv6 address on loopback."""
    try:
        is_loopback = ipaddress.ip_address(value).is_loopback
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    if not is_loopback:
        raise argparse.ArgumentTypeError(f"{value} is not a loopback address")
    return value


def serve(address: str, port: int, answer: str, ttl: int) -> list[DNSServer]:
    """Start the UDP and TCP listeners in background threads."""
    resolver = LoopbackResolver(answer, ttl)
    quiet = DNSLogger("-request,-reply,-truncated", logf=lambda line: logger.warning("%s", line))
    servers = [
        DNSServer(resolver, address=address, port=port, tcp=tcp, logger=quiet)
        for tcp in (False, True)
    ]
    for server in servers:
        server.start_thread()
    return servers


def main(argv: list[str] | None = None) -> int:
    """Serve until the lifetime ends or a signal arrives."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8053, help="UDP and TCP port")
    parser.add_argument("--address", type=loopback, default="127.0.0.1", help="listen address")
    parser.add_argument("--answer", type=loopback, default="127.0.0.1", help="the A record")
    parser.add_argument("--ttl", type=int, default=0, help="TTL of the answers")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after seconds")
    opts = parser.parse_args(argv)
    if ipaddress.ip_address(opts.answer).version != 4:
        parser.error("--answer must be an IPv4 address for an A record")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    servers = serve(opts.address, opts.port, opts.answer, opts.ttl)
    print(f"dns stub on {opts.address}:{opts.port} answering {opts.answer}", flush=True)

    stop.wait(opts.lifetime)
    for server in servers:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
