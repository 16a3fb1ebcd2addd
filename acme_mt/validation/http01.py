"""http-01 validation (RFC 8555 §8.3), for names and IP addresses (RFC 8738 §5).

The validator GETs ``http://<identifier>:<http01_port>`` followed by
``/.well-known/acme-challenge/<token>``. It resolves each host itself and
connects to that address with the ``Host`` header set, so every look-up goes
through the configured resolver. It follows at most ten redirects, to http or
https on an allowed port, reads at most 8 KiB and compares the body, without
trailing whitespace, with the key authorization.

Outcomes: the host cannot be resolved → ``dns``; no connection, a timeout, a
broken HTTP exchange or a refused redirect → ``connection``; a TLS failure
after an https redirect → ``tls``; a status other than 200 →
``unauthorized``; the wrong body → ``incorrectResponse``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os

import aiohttp
from yarl import URL

from acme_mt import __version__
from acme_mt.config import ValidationSettings
from acme_mt.errors import AcmeProblem
from acme_mt.models import Identifier
from acme_mt.validation.resolver import Deadline, Resolver

logger = logging.getLogger(__name__)

WELL_KNOWN_PATH = "/.well-known/acme-challenge/"
MAX_REDIRECTS = 10
MAX_BODY_BYTES = 8 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

#: How much of a wrong body a problem detail shows.
EXCERPT_CHARS = 64


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 literal (without brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def bracket_ipv6(host: str) -> str:
    """A host as URLs and ``Host`` write it: IPv6 in brackets (RFC 8738 §5)."""
    return f"[{host}]" if ":" in host else host


def os_error_reason(exc: OSError) -> str:
    """A short reason for a failed connection, such as 'Connection refused'."""
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def challenge_url(identifier: Identifier, port: int, token: str) -> URL:
    """The URL a client provisions for ``token`` (RFC 8555 §8.3)."""
    path = WELL_KNOWN_PATH + token
    return URL.build(scheme="http", host=identifier.value, port=port, path=path)


def redirect_target(current: URL, location: str, ports: frozenset[int]) -> URL:
    """Where a redirect leads, if the validator may follow it there.

    :raises AcmeProblem: ``connection`` for a target that is not http or
        https on one of ``ports``.
    """
    try:
        target = current.join(URL(location)).with_fragment(None)
        port = target.port
    except ValueError:
        detail = f"{current} redirected to an unusable Location {location[:200]!r}"
        raise AcmeProblem("connection", detail) from None

    if target.scheme not in ("http", "https") or not target.host:
        detail = f"{current} redirected to {target}, not an http or https URL"
        raise AcmeProblem("connection", detail)
    if port not in ports:
        allowed = ", ".join(str(p) for p in sorted(ports))
        detail = (
            f"{current} redirected to {target} on port {port}; "
            f"redirects may only go to ports {allowed}"
        )
        raise AcmeProblem("connection", detail)
    return target


def check_body(url: URL, body: bytes, key_authorization: str) -> None:
    """RFC 8555 §8.3: the body is the key authorization, bar trailing whitespace.

    ``body`` holds at most one byte more than ``MAX_BODY_BYTES``; a body that
    long is refused, since its unread rest may hold anything.

    :raises AcmeProblem: ``incorrectResponse``, quoting the start of the body.
    """
    oversized = len(body) > MAX_BODY_BYTES
    expected = key_authorization.encode("ascii")
    if not oversized and body.rstrip(b" \t\r\n") == expected:
        return

    seen = body[: EXCERPT_CHARS * 2].decode("utf-8", "replace")[:EXCERPT_CHARS]
    if len(body) > EXCERPT_CHARS:
        seen += "..."
    size = f"more than {MAX_BODY_BYTES}" if oversized else str(len(body))
    detail = (
        f"{url} served {size} bytes starting {seen!r}, not the key authorization of this challenge"
    )
    raise AcmeProblem("incorrectResponse", detail)


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    """The body up to one byte past ``MAX_BODY_BYTES``; the rest stays unread."""
    body = bytearray()
    while len(body) <= MAX_BODY_BYTES:
        chunk = await response.content.read(MAX_BODY_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


class Http01Validator:
    """Fetches http-01 responses, on a fresh connection every time."""

    def __init__(self, resolver: Resolver, settings: ValidationSettings) -> None:
        self._resolver = resolver
        self._port = settings.http01_port
        self._ports = frozenset({80, 443, settings.http01_port, settings.tlsalpn01_port})
        self._session: aiohttp.ClientSession | None = None

    async def validate(
        self,
        identifier: Identifier,
        token: str,
        key_authorization: str,
        deadline: Deadline,
    ) -> None:
        """Fetch the challenge URL, following redirects, and check the body.

        :raises AcmeProblem: as the module docstring lists.
        """
        start = url = challenge_url(identifier, self._port, token)
        for _hop in range(MAX_REDIRECTS + 1):
            status, location, body = await self._fetch(url, deadline)
            if status in REDIRECT_STATUSES and location is not None:
                url = redirect_target(url, location, self._ports)
                continue
            if status != 200:
                detail = f"{url} answered HTTP {status}, expected 200"
                raise AcmeProblem("unauthorized", detail)
            check_body(url, body, key_authorization)
            return
        detail = f"{start} redirected more than {MAX_REDIRECTS} times"
        raise AcmeProblem("connection", detail)

    async def close(self) -> None:
        """Close the client session; a later validation opens a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        """The shared session: no keep-alive, cookies or proxies from the environment."""
        if self._session is None:
            agent = f"acme-mt/{__version__} (challenge validation)"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, use_dns_cache=False),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
                headers={"User-Agent": agent, "Accept-Encoding": "identity"},
            )
        return self._session

    async def _fetch(self, url: URL, deadline: Deadline) -> tuple[int, str | None, bytes]:
        """One GET, no redirects followed: status, Location and the body's start."""
        host = url.host or ""
        if is_ip_address(host):
            address = host
        else:
            remaining = deadline.remaining()
            address = await self._resolver.first_address(host, remaining)
        where = f"{bracket_ipv6(address)}:{url.port}"
        timeout = deadline.remaining()
        if timeout <= 0:
            raise AcmeProblem("connection", f"no time was left to fetch {url}")

        # Connect to the resolved address; Host and SNI still name the target.
        target = URL.build(
            scheme=url.scheme,
            host=address,
            port=url.port,
            path=url.path,
            query=url.query,
        )
        sni = host if url.scheme == "https" and not is_ip_address(host) else None
        logger.debug("http-01: GET %s at %s", url, where)
        try:
            async with self._client().get(
                target,
                headers={"Host": bracket_ipv6(host)},
                allow_redirects=False,
                ssl=False,
                server_hostname=sni,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status != 200:
                    location = response.headers.get("Location")
                    return response.status, location, b""
                return 200, None, await _read_limited(response)
        except aiohttp.ClientSSLError as exc:
            detail = f"TLS with {where} for {url} failed: {exc}"
            raise AcmeProblem("tls", detail) from None
        except aiohttp.ClientConnectorError as exc:
            reason = os_error_reason(exc.os_error)
            detail = f"cannot connect to {where} for {url}: {reason}"
            raise AcmeProblem("connection", detail) from None
        except TimeoutError:
            limit = f"validation limit {deadline.seconds:g} s"
            detail = f"fetching {url} from {where} timed out ({limit})"
            raise AcmeProblem("connection", detail) from None
        except aiohttp.ClientError as exc:
            reason = str(exc) or type(exc).__name__
            detail = f"fetching {url} from {where} failed: {reason}"
            raise AcmeProblem("connection", detail) from None
