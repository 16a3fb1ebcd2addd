#!/usr/bin/env python3
"""A DNS stub for benchmarks: every name has one A record, 127.0.0.1 (RFC 1035 §3.4.1).

ACME servers resolve the ordered names before they fetch http-01 answers
(RFC 8555 §8.3). Pointed at this stub, they reach the load generator's
responder on loopback for any random name. Every other query type gets an
empty NOERROR answer with the zone's SOA (RFC 2308), so AAAA, CAA (RFC 8659)
and TXT look-ups find nothing, for as long as a zone's usual TTL (300 s).
It answers over UDP and TCP (RFC 1035 §4.2), on loopback only, from one event
loop rather than a thread per query, so it takes little CPU from the server
being measured. It exits after --lifetime seconds or on SIGTERM/SIGINT.

    bench/dns_stub.py --port 8053
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import cast

from dnslib import QTYPE, RR, SOA, A, DNSError, DNSLabel, DNSRecord

logger = logging.getLogger(__name__)

MAX_TCP_MESSAGE = 65535
TCP_IDLE_SECONDS = 10.0


class LoopbackAnswers:
    """Builds replies that send every name to one loopback address, so validation stays here."""

    def __init__(self, address: str, ttl: int) -> None:
        self._address = A(address)
        self._ttl = ttl

    def reply(self, packet: bytes) -> bytes | None:
        """The wire reply to one query, or None for a packet that is not a DNS query."""
        try:
            request = DNSRecord.parse(packet)
        except (DNSError, ValueError, IndexError, struct.error):
            logger.debug("dropped an unparsable packet of %d bytes", len(packet))
            return None
        reply = request.reply()
        question = request.q
        if question.qtype == QTYPE.A:
            reply.add_answer(RR(question.qname, QTYPE.A, rdata=self._address, ttl=self._ttl))
        else:
            # RFC 2308 §3: a negative answer carries its zone's SOA, whose
            # minimum bounds how long resolvers may keep it.
            zone = DNSLabel(question.qname.label[-1:])
            soa = SOA(f"ns.{zone}", f"hostmaster.{zone}", (1, 3600, 600, 86400, self._ttl))
            reply.add_auth(RR(zone, QTYPE.SOA, rdata=soa, ttl=self._ttl))
        wire: bytes = reply.pack()
        return wire


class UdpAnswers(asyncio.DatagramProtocol):
    """Answers each datagram in turn."""

    def __init__(self, answers: LoopbackAnswers) -> None:
        self._answers = answers
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the socket to answer on."""
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        """Send the reply back to the asker."""
        wire = self._answers.reply(data)
        if wire is not None and self._transport is not None:
            self._transport.sendto(wire, addr)


def tcp_handler(
    answers: LoopbackAnswers,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Answer length-prefixed queries (RFC 1035 §4.2.2) until the peer goes quiet."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(1000):
                size = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_SECONDS)
                packet = await reader.readexactly(int.from_bytes(size, "big"))
                wire = answers.reply(packet)
                if wire is None or len(wire) > MAX_TCP_MESSAGE:
                    break
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


async def serve(address: str, port: int, answers: LoopbackAnswers, lifetime: float) -> None:
    """Answer on UDP and TCP until the lifetime ends or a signal arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    udp, _ = await loop.create_datagram_endpoint(
        lambda: UdpAnswers(answers), local_addr=(address, port)
    )
    tcp = await asyncio.start_server(tcp_handler(answers), address, port)
    print(f"dns stub on {address}:{port}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), lifetime)
    except TimeoutError:
        logger.info("lifetime of %g s over", lifetime)
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()


def loopback(value: str) -> str:
    """An argparse type: an IPv4 or IPv6 address on loopback."""
    try:
        is_loopback = ipaddress.ip_address(value).is_loopback
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    if not is_loopback:
        raise argparse.ArgumentTypeError(f"{value} is not a loopback address")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8053, help="UDP and TCP port")
    parser.add_argument("--address", type=loopback, default="127.0.0.1", help="listen address")
    parser.add_argument("--answer", type=loopback, default="127.0.0.1", help="the A record")
    parser.add_argument(
        "--ttl", type=int, default=300, help="TTL of the answers and negative-caching minimum"
    )
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after seconds")
    opts = parser.parse_args(argv)
    if ipaddress.ip_address(opts.answer).version != 4:
        parser.error("--answer must be an IPv4 address for an A record")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    answers = LoopbackAnswers(opts.answer, opts.ttl)
    asyncio.run(serve(opts.address, opts.port, answers, opts.lifetime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
