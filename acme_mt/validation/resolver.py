"""DNS look-ups for validation: addresses, TXT (RFC 8555 §8.4) and CAA (RFC 8659).

Every look-up goes through one configured resolver: the ``[validation]
dns_resolver`` address when one is set, the system's otherwise. Failures come
back as ``dns`` problems whose detail names the query and what went wrong; the
resolver's own address stays in the debug log.

Addresses, and whether a name has CAA records at all, are asked through
c-ares (aiodns), which builds and parses messages in C at under half the CPU
of dnspython; it keeps answers, empty ones included, for their TTL, as the
recursive resolver in front of any CA does. A name that has CAA records is
asked again through dnspython (cached too), because c-ares hands a record's
value over as a C string, which would end it at a NUL byte, and a CAA value
must be judged whole. TXT records (dns-01) go through dnspython, always
afresh, since a client changes them just before it asks for validation.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import Any

import aiodns
import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
import pycares

from acme_mt.config import split_host_port
from acme_mt.errors import AcmeProblem, ConfigError

logger = logging.getLogger(__name__)

#: One CAA record as published (RFC 8659 §4.1): flags, tag and the raw value.
CaaRecord = tuple[int, str, bytes]

#: CAA answers kept at most, per server process.
CAA_CACHE_SIZE = 50_000

#: Record types of c-ares answers (RFC 1035 §3.2.2, RFC 3596, RFC 8659).
_A, _AAAA, _CAA = 1, 28, 257
#: c-ares errors that mean "no such name" and "no record of this type".
_NXDOMAIN, _NODATA = pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA
_TIMEOUT = pycares.errno.ARES_ETIMEOUT
_NO_ANSWER = frozenset({pycares.errno.ARES_ESERVFAIL, pycares.errno.ARES_EREFUSED})


class Deadline:
    """The end of one validation, so that all its steps share one timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(self._end - time.monotonic(), 0.0)


class Resolver:
    """Look-ups through the configured resolver; failures are ``dns`` problems."""

    def __init__(self, address: str, timeout: float) -> None:
        """Use ``address`` (``HOST:PORT``) or, when it is empty, the system's.

        :raises ConfigError: the host is not an IP address, or the system has
            no resolver configured.
        """
        self._timeout = timeout
        self._cares: aiodns.DNSResolver | None = None
        if not address:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.exception.DNSException as exc:
                hint = "set [validation] dns_resolver"
                raise ConfigError(f"the system has no DNS resolver ({exc}); {hint}") from None
            self._name = "the system resolver"
            self._servers: list[str] | None = None
        else:
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
            server = f"[{host}]" if ":" in host else host
            self._servers = [f"{server}:{port}"]
        # CAA answers, empty ones included (RFC 2308 negative caching, by the SOA
        # minimum), are kept for their TTL: every name's climb ends at the same
        # parents and the same TLD, and finalize checks the names once more.
        self._caa_resolver = dns.asyncresolver.Resolver(configure=False)
        self._caa_resolver.nameservers = list(self._resolver.nameservers)
        self._caa_resolver.port = self._resolver.port
        self._caa_resolver.cache = dns.resolver.LRUCache(CAA_CACHE_SIZE)

    async def close(self) -> None:
        """Stop the c-ares channel and its thread; a later look-up starts another."""
        cares, self._cares = self._cares, None
        if cares is not None:
            await cares.close()

    async def first_address(self, name: str, timeout: float | None = None) -> str:
        """The address to connect to: the first A record, else the first AAAA.

        :raises AcmeProblem: ``dns`` when the name does not exist, has neither
            record, or a look-up fails.
        """
        # Limitation: only this one address is tried, so a host whose first A
        # address is down fails even when its AAAA address would answer;
        # trying each address in turn within the deadline would end it.
        deadline = Deadline(self._timeout if timeout is None else timeout)
        for rdtype, number in (("A", _A), ("AAAA", _AAAA)):
            records = await self._ask_cares(name, rdtype, number, deadline.remaining())
            if records:
                return str(records[0].addr)
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
        deadline = Deadline(self._timeout if timeout is None else timeout)
        if not await self._ask_cares(name, "CAA", _CAA, deadline.remaining(), missing_ok=True):
            return []
        records = await self._query(name, "CAA", deadline.remaining(), missing_ok=True, cached=True)
        return [(int(r.flags), r.tag.decode("ascii", "replace"), bytes(r.value)) for r in records]

    def _channel(self) -> aiodns.DNSResolver:
        if self._cares is None:
            options: dict[str, Any] = {"timeout": self._timeout, "tries": 1}
            self._cares = aiodns.DNSResolver(self._servers, **options)
        return self._cares

    async def _ask_cares(
        self, name: str, rdtype: str, number: int, lifetime: float, *, missing_ok: bool = False
    ) -> list[Any]:
        """The record data of one type at one name, through c-ares; no record is []."""
        query = f"DNS look-up of {rdtype} for {name}"
        if lifetime <= 0:
            detail = f"{query} had no time left before the validation timeout"
            raise AcmeProblem("dns", detail)
        try:
            result = await asyncio.wait_for(self._channel().query_dns(name, rdtype), lifetime)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            if code == _NODATA or (code == _NXDOMAIN and missing_ok):
                return []
            if code == _NXDOMAIN:
                detail = f"{query}: the name does not exist (NXDOMAIN)"
                raise AcmeProblem("dns", detail) from None
            logger.debug("%s failed at %s: %r", query, self._name, exc)
            if code == _TIMEOUT:
                raise AcmeProblem("dns", f"{query} timed out after {lifetime:.3g} s") from None
            if code in _NO_ANSWER:
                reason = "no name server gave an answer (SERVFAIL or REFUSED)"
                raise AcmeProblem("dns", f"{query} failed: {reason}") from None
            reason = exc.args[1] if len(exc.args) > 1 else "the resolver failed"
            raise AcmeProblem("dns", f"{query} failed: {reason}") from None
        except TimeoutError:
            logger.debug("%s timed out at %s", query, self._name)
            raise AcmeProblem("dns", f"{query} timed out after {lifetime:.3g} s") from None
        return [record.data for record in result.answer if record.type == number]

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
