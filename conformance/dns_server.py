"""A loopback DNS server for validation tests: A, AAAA, TXT and CAA from files.

Every name has the A record 127.0.0.1 and no AAAA record (an empty NOERROR
answer), so http-01 and tls-alpn-01 land on loopback. TXT records for dns-01
(RFC 8555 §8.4) come from ``<records>/<name>.txt``, one value per line, which
``conformance/dns_hook.py`` writes for certbot and lego. CAA records (RFC
8659) come from ``<records>/caa.json``: ``{"name": [[flags, "tag", "value"],
...]}``. Names listed one per line in ``<records>/nxdomain.txt`` answer
NXDOMAIN. Names match in lower case without the trailing dot, and the files
are read on every query, so a change applies at once. UDP and TCP share one
port.

Run it as ``python conformance/dns_server.py --port P --records DIR``: it
prints ``ready`` once both sockets listen and stops on SIGINT or SIGTERM.
Tests import ``LoopbackDnsServer`` and call ``start()`` and ``stop()``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from dnslib import CAA, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

logger = logging.getLogger(__name__)

ANSWER_ADDRESS = "127.0.0.1"
CAA_FILE = "caa.json"
NXDOMAIN_FILE = "nxdomain.txt"

#: Names that may become file names; any other name has no TXT record.
_FILE_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")

#: How many times to look for a port free for both UDP and TCP.
_BIND_ATTEMPTS = 20


def txt_file(records: Path, name: str) -> Path | None:
    """The file of ``name``'s TXT values; None for a name unfit as a file name."""
    key = name.rstrip(".").lower()
    if not _FILE_NAME.fullmatch(key):
        return None
    return records / f"{key}.txt"


def _lines(path: Path) -> list[str]:
    """The non-empty, stripped lines of a file that may not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()]


class RecordFileResolver(BaseResolver):  # type: ignore[misc]
    """Answers from the records directory, read afresh for each query."""

    def __init__(self, records: Path) -> None:
        self.records = records

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        """Build the answer to one query."""
        reply = request.reply()
        qname, qtype = request.q.qname, request.q.qtype
        name = str(qname).rstrip(".").lower()

        missing = _lines(self.records / NXDOMAIN_FILE)
        if name in {line.rstrip(".").lower() for line in missing}:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply

        if qtype == QTYPE.A:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(ANSWER_ADDRESS), ttl=0))
        elif qtype == QTYPE.TXT:
            path = txt_file(self.records, name)
            for value in _lines(path) if path else []:
                # A string holds up to 255 bytes (RFC 1035 §3.3.14).
                parts = [value[i : i + 255] for i in range(0, len(value), 255)]
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(parts), ttl=0))
        elif qtype == QTYPE.CAA:
            try:
                records = self._caa(name)
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("cannot use %s: %s", CAA_FILE, exc)
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            for flags, tag, value in records:
                rdata = CAA(flags, tag, value)
                reply.add_answer(RR(qname, QTYPE.CAA, rdata=rdata, ttl=0))
        return reply

    def _caa(self, name: str) -> list[tuple[int, str, str]]:
        """The CAA records ``caa.json`` lists for ``name``."""
        try:
            text = (self.records / CAA_FILE).read_text()
        except FileNotFoundError:
            return []
        table: dict[str, Any] = json.loads(text)
        for key, entries in table.items():
            if key.rstrip(".").lower() == name:
                return [(int(f), str(tag), str(value)) for f, tag, value in entries]
        return []


class _QuietLogger(DNSLogger):  # type: ignore[misc]
    """dnslib's per-packet lines go to this module's debug log, not stdout."""

    def __init__(self) -> None:
        super().__init__(prefix=False, logf=lambda line: logger.debug("%s", line))


class LoopbackDnsServer:
    """A UDP and TCP DNS server on one loopback port, for fixtures and scripts."""

    def __init__(self, records: Path | str, port: int = 0, address: str = "127.0.0.1") -> None:
        self.records = Path(records)
        self.address = address
        self.port = port
        self._servers: list[DNSServer] = []

    @property
    def resolver_address(self) -> str:
        """The ``HOST:PORT`` that ``[validation] dns_resolver`` takes."""
        return f"{self.address}:{self.port}"

    def start(self) -> int:
        """Listen on UDP and TCP, answer in background threads; return the port."""
        resolver = RecordFileResolver(self.records)
        attempts = _BIND_ATTEMPTS if self.port == 0 else 1
        for _attempt in range(attempts):
            udp = DNSServer(resolver, self.address, self.port, logger=_QuietLogger())
            port = int(udp.server.server_address[1])
            try:
                tcp = DNSServer(resolver, self.address, port, tcp=True, logger=_QuietLogger())
            except OSError:
                udp.server.server_close()
                if self.port:
                    raise
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                # A short poll interval lets stop() return quickly.
                server.thread = threading.Thread(
                    target=server.server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    daemon=True,
                )
                server.thread.start()
            return port
        raise OSError(f"no port on {self.address} is free for both UDP and TCP")

    def stop(self) -> None:
        """Stop answering and close both sockets."""
        for server in self._servers:
            server.stop()
            server.server.server_close()
            server.thread.join(timeout=5)
        self._servers = []

    def __enter__(self) -> LoopbackDnsServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--port", type=int, required=True, help="UDP and TCP port (0: any)")
    add("--records", required=True, help="directory of the record files")
    add("--address", default="127.0.0.1", help="loopback address to use")
    add("--verbose", action="store_true", help="log every query on stderr")
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level)

    records = Path(args.records)
    records.mkdir(parents=True, exist_ok=True)
    server = LoopbackDnsServer(records, args.port, args.address)
    server.start()
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    print(f"listening on {server.resolver_address}", file=sys.stderr)
    print("ready", flush=True)
    stopping.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
