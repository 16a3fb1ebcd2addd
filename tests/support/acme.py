"""A small ACME client for tests: raw JWS posts so tests can also send what real
clients never would (wrong urls, other tenants' kids, bad payloads)."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import josepy as jose
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy import jws as jose_jws
from josepy.json_util import field as jose_field


class AcmeHeader(jose_jws.Header):
    """A JOSE header with the two ACME members, nonce and url, for signing requests."""

    nonce: str | None = jose_field("nonce", omitempty=True)
    url: str | None = jose_field("url", omitempty=True)


class AcmeSignature(jose_jws.Signature):
    __slots__ = jose_jws.Signature._orig_slots
    header_cls = AcmeHeader
    header: AcmeHeader = jose_field(
        "header", omitempty=True, default=AcmeHeader(), decoder=AcmeHeader.from_json
    )


class AcmeJWS(jose_jws.JWS):
    """josepy's JWS with ACME headers: what the test client signs with."""

    __slots__ = jose_jws.JWS._orig_slots
    signature_cls = AcmeSignature


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


@dataclass
class AcmeTestClient:
    """One account key talking to one directory."""

    session: aiohttp.ClientSession
    directory_url: str
    ssl_context: ssl.SSLContext | bool
    key: jose.JWK = field(
        default_factory=lambda: jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    )
    kid: str | None = None
    directory: dict[str, Any] = field(default_factory=dict)
    _nonce: str | None = None

    async def load_directory(self) -> dict[str, Any]:
        async with self.session.get(self.directory_url, ssl=self.ssl_context) as resp:
            self.directory = await resp.json()
        return self.directory

    async def nonce(self) -> str:
        if self._nonce:
            nonce, self._nonce = self._nonce, None
            return nonce
        async with self.session.head(self.directory["newNonce"], ssl=self.ssl_context) as resp:
            return resp.headers["Replay-Nonce"]

    def sign(
        self,
        url: str,
        payload: Any,
        nonce: str | None,
        *,
        use_jwk: bool = False,
        key: jose.JWK | None = None,
        kid: str | None = None,
    ) -> dict[str, Any]:
        key = key or self.key
        raw = b"" if payload is None else json.dumps(payload).encode()
        alg = jose.ES256 if isinstance(key, jose.JWKEC) else jose.RS256
        kid = kid if kid is not None else self.kid
        headers: dict[str, Any] = {"url": url}
        if nonce is not None:
            headers["nonce"] = nonce
        protect = {"alg", "url"} | ({"nonce"} if nonce is not None else set())
        if use_jwk or kid is None:
            protect.add("jwk")
            signed = AcmeJWS.sign(
                raw, key=key, alg=alg, include_jwk=True, protect=frozenset(protect), **headers
            )
        else:
            protect.add("kid")
            signed = AcmeJWS.sign(
                raw,
                key=key,
                alg=alg,
                include_jwk=False,
                kid=kid,
                protect=frozenset(protect),
                **headers,
            )
        result: dict[str, Any] = signed.to_partial_json()
        return result

    async def post_raw(
        self, url: str, body: bytes, content_type: str = "application/jose+json"
    ) -> Reply:
        async with self.session.post(
            url, data=body, headers={"Content-Type": content_type}, ssl=self.ssl_context
        ) as resp:
            reply = Reply(resp.status, resp.headers, await resp.read())
        self._nonce = reply.headers.get("Replay-Nonce")
        return reply

    async def post(self, url: str, payload: Any = None, **kwargs: Any) -> Reply:
        """POST a signed payload (``None`` for POST-as-GET); retries once on badNonce."""
        for _ in range(2):
            body = self.sign(url, payload, await self.nonce(), **kwargs)
            reply = await self.post_raw(url, json.dumps(body).encode())
            if reply.status == 400 and b"badNonce" in reply.body:
                continue
            return reply
        return reply

    async def new_account(self, eab: tuple[str, bytes] | None = None, **extra: Any) -> Reply:
        payload: dict[str, Any] = {"termsOfServiceAgreed": True, **extra}
        if eab is not None:
            payload["externalAccountBinding"] = eab_binding(
                self.key, eab[0], eab[1], self.directory["newAccount"]
            )
        reply = await self.post(self.directory["newAccount"], payload, use_jwk=True)
        if reply.status in (200, 201):
            self.kid = reply.location
        return reply


def eab_binding(account_key: jose.JWK, kid: str, hmac_key: bytes, url: str) -> dict[str, Any]:
    """The inner JWS of RFC 8555 §7.3.4."""
    payload = json.dumps(account_key.public_key().to_partial_json()).encode()
    signed = AcmeJWS.sign(
        payload,
        key=jose.JWKOct(key=hmac_key),
        alg=jose.HS256,
        include_jwk=False,
        kid=kid,
        url=url,
        protect=frozenset({"alg", "kid", "url"}),
    )
    result: dict[str, Any] = signed.to_partial_json()
    return result


def make_csr(
    names: list[str], key: Any = None, common_name: str | None = None
) -> tuple[bytes, Any]:
    """A DER CSR for ``names`` (no CN unless given) and its key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER), key
