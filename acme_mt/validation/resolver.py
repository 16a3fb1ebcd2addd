"""DNS look-ups for validation: addresses, TXT (RFC 8555 §8.4) and CAA (RFC 8659).

Every look-up goes through one configured resolver: the ``[validation]
dns_resolver`` address when one is set, the system's otherwise. Failures come
back as ``dns`` problems whose detail names the query and what went wrong; the
resolver's own address stays in the debug log.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from acme_mt.config import split_host_port
from acme_mt.errors import AcmeProblem, ConfigError

logger = logging.getLogger(__name__)

#: One CAA record as published (RFC 8659 §4.1): flags, tag and the raw value.
CaaRecord = tuple[int, str, bytes]

#: CAA answers kept at most, per server process.
CAA_CACHE_SIZE = 50_000


class Deadline:
    """The end of one validation, so that all its steps share one timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(self._end - time.monotonic(), 0.0)


# Limitation: dnspython opens a socket per query and parses the answer in
# Python, about 0.8 ms of CPU a query here and the largest single cost of a
# validation on the event loop; a resolver that works in C (c-ares through
# aiodns) would cut it to a fraction.
class Resolver:
    """Look-ups through the configured resolver; failures are ``dns`` problems."""

    def __init__(self, address: str, timeout: float) -> None:
        """Use ``address`` (``HOST:PORT``) or, when it is empty, the system's.

        :raises ConfigError: the host is not an IP address, or the system has
            no resolver configured.
        """
        self._timeout = timeout
        if not address:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.exception.DNSException as exc:
                hint = "set [validation] dns_resolver"
                raise ConfigError(f"the system has no DNS resolver ({exc}); {hint}") from None
            self._name = "the system resolver"
            return

        host, port = split_host_port(address, 53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"[validation] dns_resolver must be an IP address and port, not {address!r}"
            ) from None
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [host]
        self._resolver.port = port
        self._name = address

    @functools.cached_property
    def _caa_resolver(self) -> dns.asyncresolver.Resolver:
        """The same resolver with a cache, for CAA alone.

        CAA answers, empty ones included (RFC 2308 negative caching, by the
        SOA minimum), are kept for their TTL as any recursive resolver keeps
        them: every name's climb ends at the same parents and the same TLD,
        and finalize checks the names once more. Addresses and TXT records
        are always asked afresh, since a client changes them just before it
        asks for validation.
        """
        caching = dns.asyncresolver.Resolver(configure=False)
        caching.nameservers = list(self._resolver.nameservers)
        caching.port = self._resolver.port
        caching.cache = dns.resolver.LRUCache(CAA_CACHE_SIZE)
        return caching

    async def first_address(self, name: str, timeout: float | None = None) -> str:
        """The address to connect to: the first A record, else the first AAAA.

        :raises AcmeProblem: ``dns`` when the name does not exist, has neither
            record, or a look-up fails.
        """
        # Limitation: only this one address is tried, so a host whose first A
        # address is down fails even when its AAAA address would answer;
        # trying each address in turn within the deadline would end it.
        deadline = Deadline(self._timeout if timeout is None else timeout)
        for rdtype in ("A", "AAAA"):
            records = await self._query(name, rdtype, deadline.remaining())
            if records:
                return str(records[0].address)
        raise AcmeProblem("dns", f"DNS has no A or AAAA record for {name}")

    async def resolve_txt(self, name: str, timeout: float | None = None) -> list[str]:
        """Every TXT value at ``name``, the strings of each record joined.

        :raises AcmeProblem: ``dns`` when the name does not exist or the
            look-up fails.
        """
        records = await self._query(name, "TXT", timeout)
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records]

    async def resolve_caa(self, name: str, timeout: float | None = None) -> list[CaaRecord]:
        """The CAA records at exactly ``name``: no tree climbing, no policy.

        A name that does not exist has no CAA record set (RFC 8659 §3), so
        it gives an empty list rather than a problem.

        :raises AcmeProblem: ``dns`` when the look-up fails, which RFC 8659
            §3 says must stop issuance.
        """
        records = await self._query(name, "CAA", timeout, missing_ok=True, cached=True)
        return [(int(r.flags), r.tag.decode("ascii", "replace"), bytes(r.value)) for r in records]

    async def _query(
        self,
        name: str,
        rdtype: str,
        timeout: float | None,
        *,
        missing_ok: bool = False,
        cached: bool = False,
    ) -> list[Any]:
        """The records of one type at one name; an empty answer is []."""
        lifetime = self._timeout if timeout is None else timeout
        query = f"DNS look-up of {rdtype} for {name}"
        if lifetime <= 0:
            detail = f"{query} had no time left before the validation timeout"
            raise AcmeProblem("dns", detail)

        try:
            resolver = self._caa_resolver if cached else self._resolver
            answer = await resolver.resolve(
                dns.name.from_text(name),
                rdtype,
                lifetime=lifetime,
                raise_on_no_answer=False,
                search=False,
            )
        except dns.resolver.NXDOMAIN:
            if missing_ok:
                return []
            detail = f"{query}: the name does not exist (NXDOMAIN)"
            raise AcmeProblem("dns", detail) from None
        except dns.exception.Timeout:
            logger.debug("%s timed out at %s", query, self._name)
            detail = f"{query} timed out after {lifetime:.3g} s"
            raise AcmeProblem("dns", detail) from None
        except dns.resolver.NoNameservers as exc:
            logger.debug("%s failed at %s: %s", query, self._name, exc)
            reason = "no name server gave an answer (SERVFAIL or REFUSED)"
            raise AcmeProblem("dns", f"{query} failed: {reason}") from None
        except (dns.exception.DNSException, OSError) as exc:
            logger.debug("%s failed at %s: %r", query, self._name, exc)
            raise AcmeProblem("dns", f"{query} failed: {exc}") from None

        return list(answer.rrset or ())
