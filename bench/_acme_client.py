"""A lean ACME client for load generation: one account, many orders (RFC 8555 §7).

It walks the whole issuance flow against any RFC 8555 server: newNonce (§7.2),
newAccount with optional external account binding (§7.3, §7.3.4), newOrder
(§7.4), authorization fetch and the http-01 challenge (§7.5, §8.3), polling,
finalize with a fresh P-256 CSR and the certificate download (§7.4.2). Every
POST is a JWS (§6.2); resources are read by POST-as-GET (§6.3). josepy signs,
cryptography makes keys and CSRs, aiohttp carries the requests.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.b64 import b64encode
from josepy.json_util import field
from josepy.jwa import ES256, HS256
from josepy.jwk import JWKEC, JWKOct
from josepy.jws import JWS, Header, Signature

logger = logging.getLogger(__name__)

JOSE_JSON = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"
ERROR_PREFIX = "urn:ietf:params:acme:error:"

# Longest pause a Retry-After may impose; the run's stall watchdog stops a
# server that keeps asking for more than this.
MAX_WAIT = 10.0

_WITH_JWK = frozenset({"alg", "jwk", "nonce", "url"})
_WITH_KID = frozenset({"alg", "kid", "nonce", "url"})
_EAB_PROTECTED = frozenset({"alg", "kid", "url"})


class AcmeHeader(Header):
    """Carries the `nonce` and `url` protected fields that RFC 8555 §6.4-6.5 add to JOSE."""

    nonce: str | None = field("nonce", omitempty=True)
    url: str | None = field("url", omitempty=True)


class AcmeSignature(Signature):
    """Lets josepy build signatures whose headers are `AcmeHeader`s."""

    __slots__ = ("combined",)
    header_cls = AcmeHeader
    header: AcmeHeader = field(
        "header", omitempty=True, default=AcmeHeader(), decoder=AcmeHeader.from_json
    )


class AcmeJWS(JWS):
    """A flattened JWS (RFC 8555 §6.2) signed with `AcmeSignature`."""

    __slots__ = JWS._orig_slots
    signature_cls = AcmeSignature


class BenchError(Exception):
    """Root of the failures one issuance can meet; `kind` names it in the tallies."""

    kind = "client"


class ProtocolError(BenchError):
    """The server answered something RFC 8555 does not allow at this step."""

    kind = "protocol"


class AcmeProblem(BenchError):
    """An RFC 7807 problem document from the server (RFC 8555 §6.7)."""

    def __init__(self, status: int, problem_type: str, detail: str) -> None:
        super().__init__(f"{status} {problem_type}: {detail}")
        self.status = status
        self.problem_type = problem_type
        self.kind = problem_type.removeprefix(ERROR_PREFIX) or f"http-{status}"


@dataclass(frozen=True)
class ExternalAccount:
    """An external account binding key pair handed out by the CA (RFC 8555 §7.3.4)."""

    kid: str
    hmac_key: bytes


@dataclass(frozen=True)
class PollPolicy:
    """How to wait between polls, so servers without Retry-After are not penalised."""

    interval: float = 0.05
    honour_retry_after: bool = True
    max_polls: int = 400


@dataclass(frozen=True)
class Issued:
    """What one finished issuance cost."""

    name: str
    seconds: float
    authz_polls: int
    order_polls: int
    chain_length: int


@dataclass
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        if not isinstance(value, dict):
            raise ProtocolError("expected a JSON object")
        return value

    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


def parse_retry_after(value: str | None) -> float | None:
    """Read delay-seconds or an HTTP-date (RFC 9110 §10.2.3) as seconds from now."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class AcmeClient:
    """One ACME account issuing certificates one after another over one session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        directory: Mapping[str, Any],
        challenges: MutableMapping[str, str],
        polls: PollPolicy,
    ) -> None:
        for name in ("newNonce", "newAccount", "newOrder"):
            if not isinstance(directory.get(name), str):
                raise ProtocolError(f"directory lacks {name}")
        self._session = session
        self._directory = directory
        self._challenges = challenges
        self._polls = polls
        self._key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        self._thumbprint = b64encode(self._key.thumbprint()).decode()
        self._kid: str | None = None
        self._nonce: str | None = None

    async def register(self, eab: ExternalAccount | None = None) -> None:
        """Create this client's account (RFC 8555 §7.3) so later requests sign by kid."""
        url = self._directory["newAccount"]
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if eab is not None:
            payload["externalAccountBinding"] = self._bind(eab, url)

        reply = await self._post(url, payload)
        location = reply.headers.get("Location")
        if reply.status not in (200, 201) or not location:
            raise ProtocolError(f"newAccount answered {reply.status} without Location")
        self._kid = location

    async def issue(self, name: str) -> Issued:
        """Obtain one certificate for `name` through the full order flow (RFC 8555 §7.4)."""
        started = time.perf_counter()
        counts = {"authz": 0, "order": 0}

        identifiers = [{"type": "dns", "value": name}]
        reply = await self._post(self._directory["newOrder"], {"identifiers": identifiers})
        order_url = reply.headers.get("Location")
        if reply.status != 201 or not order_url:
            raise ProtocolError(f"newOrder answered {reply.status} without Location")
        order = reply.json()

        for authz_url in order.get("authorizations", ()):
            await self._authorize(authz_url, counts)

        csr = _make_csr(name)
        order = await self._finalize(order, order_url, csr, counts)
        chain = await self._download(order, name)
        return Issued(
            name=name,
            seconds=time.perf_counter() - started,
            authz_polls=counts["authz"],
            order_polls=counts["order"],
            chain_length=chain,
        )

    async def _authorize(self, url: str, counts: dict[str, int]) -> None:
        authz = (await self._post(url, None)).json()
        if authz.get("status") == "valid":
            return
        # Limitation: only http-01 is answered, so servers that offer only dns-01 or
        # tls-alpn-01 cannot be measured; a DNS TXT or ALPN responder would end this.
        challenge = next(
            (c for c in authz.get("challenges", ()) if c.get("type") == "http-01"), None
        )
        if challenge is None:
            raise ProtocolError("authorization offers no http-01 challenge")

        token = challenge["token"]
        self._challenges[token] = f"{token}.{self._thumbprint}"
        try:
            reply = await self._post(challenge["url"], {})
            if reply.json().get("status") == "valid":
                return
            authz = await self._poll(url, reply, {"pending"}, counts, "authz")
        finally:
            self._challenges.pop(token, None)

        if authz.get("status") != "valid":
            raise BenchError(f"authorization ended {authz.get('status')}")

    async def _finalize(
        self, order: dict[str, Any], order_url: str, csr: bytes, counts: dict[str, int]
    ) -> dict[str, Any]:
        payload = {"csr": b64encode(csr).decode()}
        try:
            reply = await self._post(order["finalize"], payload)
        except AcmeProblem as problem:
            if problem.kind != "orderNotReady":
                raise
            # RFC 8555 §7.4: the order may still be pending just after its last authorization.
            last = await self._post(order_url, None)
            counts["order"] += 1
            if last.json().get("status") == "pending":
                await self._poll(order_url, last, {"pending"}, counts, "order")
            reply = await self._post(order["finalize"], payload)

        order = reply.json()
        if order.get("status") != "valid":
            order = await self._poll(order_url, reply, {"processing"}, counts, "order")
        if order.get("status") != "valid":
            raise BenchError(f"order ended {order.get('status')}: {order.get('error')}")
        return order

    async def _download(self, order: Mapping[str, Any], name: str) -> int:
        url = order.get("certificate")
        if not isinstance(url, str):
            raise ProtocolError("valid order has no certificate URL")
        reply = await self._post(url, None, accept=PEM_CHAIN)
        try:
            chain = x509.load_pem_x509_certificates(reply.body)
        except ValueError as error:
            raise ProtocolError("certificate download is not a PEM chain") from error
        san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        if san.value.get_values_for_type(x509.DNSName) != [name]:
            raise ProtocolError("leaf certificate does not name the ordered identifier")
        return len(chain)

    async def _poll(
        self,
        url: str,
        last: _Reply,
        pending: set[str],
        counts: dict[str, int],
        what: str,
    ) -> dict[str, Any]:
        """POST-as-GET `url` until its status leaves `pending` (RFC 8555 §7.5.1, §7.4)."""
        for _ in range(self._polls.max_polls):
            await asyncio.sleep(self._wait_after(last))
            last = await self._post(url, None)
            counts[what] += 1
            body = last.json()
            if body.get("status") not in pending:
                return body
        raise BenchError(f"{what} still pending after {self._polls.max_polls} polls")

    def _wait_after(self, reply: _Reply) -> float:
        hint = reply.retry_after() if self._polls.honour_retry_after else None
        return self._polls.interval if hint is None else min(hint, MAX_WAIT)

    def _bind(self, eab: ExternalAccount, url: str) -> dict[str, Any]:
        account_jwk = self._key.public_key().json_dumps().encode()
        binding = AcmeJWS.sign(
            payload=account_jwk,
            key=JWKOct(key=eab.hmac_key),
            alg=HS256,
            include_jwk=False,
            protect=_EAB_PROTECTED,
            kid=eab.kid,
            url=url,
        )
        result: dict[str, Any] = binding.to_json()
        return result

    async def _post(
        self, url: str, payload: dict[str, Any] | None, *, accept: str | None = None
    ) -> _Reply:
        """Send one signed POST; a badNonce answer is retried once (RFC 8555 §6.5)."""
        body = b"" if payload is None else json.dumps(payload).encode()
        reply = await self._send(url, body, accept)
        if reply.status == 400 and _problem_type(reply) == ERROR_PREFIX + "badNonce":
            logger.debug("badNonce from %s, retrying once", url)
            reply = await self._send(url, body, accept)
        if reply.status >= 400:
            raise _problem(reply)
        return reply

    async def _send(self, url: str, body: bytes, accept: str | None) -> _Reply:
        nonce = self._nonce or await self._fresh_nonce()
        self._nonce = None
        if self._kid is None:
            jws = AcmeJWS.sign(
                payload=body, key=self._key, alg=ES256, include_jwk=True,
                protect=_WITH_JWK, nonce=nonce, url=url,
            )  # fmt: skip
        else:
            jws = AcmeJWS.sign(
                payload=body, key=self._key, alg=ES256, include_jwk=False,
                protect=_WITH_KID, nonce=nonce, url=url, kid=self._kid,
            )  # fmt: skip

        headers = {"Content-Type": JOSE_JSON}
        if accept is not None:
            headers["Accept"] = accept
        async with self._session.post(url, data=jws.json_dumps(), headers=headers) as response:
            reply = _Reply(response.status, response.headers, await response.read())
        self._nonce = reply.headers.get("Replay-Nonce") or None
        return reply

    async def _fresh_nonce(self) -> str:
        async with self._session.head(self._directory["newNonce"]) as response:
            nonce = response.headers.get("Replay-Nonce")
        if not nonce:
            raise ProtocolError("newNonce answered without Replay-Nonce")
        return nonce


def _make_csr(name: str) -> bytes:
    """A CN-less CSR with the name only in the SAN, as RFC 8555 §7.4 allows."""
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName(name)])
    builder = x509.CertificateSigningRequestBuilder(subject_name=x509.Name([]))
    csr = builder.add_extension(san, critical=False).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER)


def _problem_type(reply: _Reply) -> str:
    try:
        value = json.loads(reply.body).get("type", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def _problem(reply: _Reply) -> AcmeProblem:
    try:
        detail = str(json.loads(reply.body).get("detail", ""))
    except (ValueError, AttributeError):
        detail = ""
    return AcmeProblem(reply.status, _problem_type(reply), detail[:200])
