"""http-01 validation (RFC 8555 §8.3), for DNS names and IP addresses (RFC 8738 §5).

The validator GETs ``http://<identifier>:<http01_port>/.well-known/acme-challenge/<token>``.
It resolves each host itself and connects to that address with the ``Host``
header set, so every look-up goes through the configured resolver. It follows
at most ten redirects, to http or https on an allowed port, reads at most
8 KiB and compares the body, without trailing whitespace, with the key
authorization.

Outcomes: the host cannot be resolved → ``dns``; no connection, a timeout, a
broken HTTP exchange or a refused redirect → ``connection``; a TLS failure after
an https redirect → ``tls``; a status other than 200 → ``unauthorized``; the
wrong body → ``incorrectResponse``.
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


def host_header(host: str) -> str:
    """The ``Host`` value for a host: IPv6 literals in brackets (RFC 8738 §5, RFC 3986 §3.2.2)."""
    return f"[{host}]" if ":" in host else host


def challenge_url(identifier: Identifier, port: int, token: str) -> URL:
    """The URL a client provisions for ``token`` (RFC 8555 §8.3)."""
    return URL.build(scheme="http", host=identifier.value, port=port, path=WELL_KNOWN_PATH + token)


def redirect_target(current: URL, location: str, allowed_ports: frozenset[int]) -> URL:
    """Where a redirect leads, if the validator may follow it there.

    :raises AcmeProblem: ``connection`` for a target that is not http or https
        on an allowed port.
    """
    try:
        target = current.join(URL(location)).with_fragment(None)
        port = target.port
    except ValueError:
        raise AcmeProblem(
            "connection", f"{current} redirected to an unusable Location {location[:200]!r}"
        ) from None
    if target.scheme not in ("http", "https") or not target.host:
        raise AcmeProblem(
            "connection", f"{current} redirected to {target}, which is not an http or https URL"
        )
    if port not in allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(allowed_ports))
        raise AcmeProblem(
            "connection",
            f"{current} redirected to {target} on port {port}; redirects may only go to ports "
            f"{allowed}",
        )
    return target


def check_body(url: URL, body: bytes, key_authorization: str) -> None:
    """RFC 8555 §8.3: the body is the key authorization; trailing whitespace is ignored.

    ``body`` holds at most one byte more than ``MAX_BODY_BYTES``; a body that
    long is refused, since its unread rest may hold anything.

    :raises AcmeProblem: ``incorrectResponse``, quoting the start of what was served.
    """
    oversized = len(body) > MAX_BODY_BYTES
    if not oversized and body.rstrip(b" \t\r\n") == key_authorization.encode("ascii"):
        return
    seen = body[: EXCERPT_CHARS * 2].decode("utf-8", "replace")
    excerpt = seen[:EXCERPT_CHARS] + ("..." if len(body) > EXCERPT_CHARS else "")
    size = f"more than {MAX_BODY_BYTES}" if oversized else str(len(body))
    raise AcmeProblem(
        "incorrectResponse",
        f"{url} served {size} bytes starting {excerpt!r}, not the key authorization "
        "of this challenge",
    )


def os_error_reason(exc: OSError) -> str:
    """A short reason for a failed connection, such as 'Connection refused'."""
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


async def _read_limited(response: aiohttp.ClientResponse) -> bytes:
    """The body up to one byte past ``MAX_BODY_BYTES``; the rest is never read."""
    body = bytearray()
    while len(body) <= MAX_BODY_BYTES:
        chunk = await response.content.read(MAX_BODY_BYTES + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


class Http01Validator:
    """Fetches http-01 responses, with a fresh connection for every request."""

    def __init__(self, resolver: Resolver, settings: ValidationSettings) -> None:
        self._resolver = resolver
        self._port = settings.http01_port
        self._allowed_ports = frozenset({80, 443, settings.http01_port, settings.tlsalpn01_port})
        self._session: aiohttp.ClientSession | None = None

    async def validate(
        self, identifier: Identifier, token: str, key_authorization: str, deadline: Deadline
    ) -> None:
        """Fetch the challenge URL, following redirects, and check the body.

        :raises AcmeProblem: as the module docstring lists.
        """
        start = url = challenge_url(identifier, self._port, token)
        for _hop in range(MAX_REDIRECTS + 1):
            status, location, body = await self._fetch(url, deadline)
            if status in REDIRECT_STATUSES:
                if location is None:
                    raise AcmeProblem(
                        "unauthorized", f"{url} answered HTTP {status} without a Location"
                    )
                url = redirect_target(url, location, self._allowed_ports)
                continue
            if status != 200:
                raise AcmeProblem("unauthorized", f"{url} answered HTTP {status}, expected 200")
            check_body(url, body, key_authorization)
            return
        raise AcmeProblem("connection", f"{start} redirected more than {MAX_REDIRECTS} times")

    async def close(self) -> None:
        """Close the client session; a later validation opens a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        """The shared session: no keep-alive, no cookies, no proxies from the environment."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, use_dns_cache=False),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
                headers={
                    "User-Agent": f"acme-mt/{__version__} (challenge validation)",
                    "Accept-Encoding": "identity",
                },
            )
        return self._session

    async def _fetch(self, url: URL, deadline: Deadline) -> tuple[int, str | None, bytes]:
        """One GET without following redirects: status, Location and the start of the body."""
        host = url.host or ""
        if is_ip_address(host):
            address = host
        else:
            address = await self._resolver.first_address(host, deadline.remaining())
        port = url.port
        where = f"{host_header(address)}:{port}"
        timeout = deadline.remaining()
        if timeout <= 0:
            raise AcmeProblem("connection", f"no time was left to fetch {url}")

        # Connect to the resolved address; Host and SNI still name the target.
        target = URL.build(
            scheme=url.scheme, host=address, port=port, path=url.path, query=url.query
        )
        https_name = host if url.scheme == "https" and not is_ip_address(host) else None
        logger.debug("http-01: GET %s at %s", url, where)
        try:
            async with self._client().get(
                target,
                headers={"Host": host_header(host)},
                allow_redirects=False,
                ssl=False,
                server_hostname=https_name,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status != 200:
                    return response.status, response.headers.get("Location"), b""
                return response.status, None, await _read_limited(response)
        except aiohttp.ClientSSLError as exc:
            raise AcmeProblem("tls", f"TLS with {where} for {url} failed: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            raise AcmeProblem(
                "connection",
                f"cannot connect to {where} for {url}: {os_error_reason(exc.os_error)}",
            ) from None
        except TimeoutError:
            raise AcmeProblem(
                "connection",
                f"fetching {url} from {where} timed out (validation limit {deadline.seconds:g} s)",
            ) from None
        except aiohttp.ClientError as exc:
            reason = str(exc) or type(exc).__name__
            detail = f"fetching {url} from {where} failed: {reason}"
            raise AcmeProblem("connection", detail) from None
