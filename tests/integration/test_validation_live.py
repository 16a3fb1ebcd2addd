"""Challenge validation against real servers on loopback, each started here.

The test DNS server (``conformance/dns_server.py``) answers 127.0.0.1 for
every name, so http-01 and tls-alpn-01 reach the responders these tests start
on free ports; dns-01 records are written by ``conformance/dns_hook.py``, the
way certbot and lego call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from acme_mt.config import ValidationSettings
from acme_mt.errors import AcmeProblem
from acme_mt.models import Identifier
from acme_mt.validation import Validator, txt_record_value
from acme_mt.validation.tlsalpn01 import ACME_IDENTIFIER_OID, ACME_TLS_1
from conformance.dns_server import LoopbackDnsServer
from tests.support.live import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
KEY_AUTHORIZATION = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
NAME = Identifier("dns", "www.example.test")
CHALLENGE_PATH = f"/.well-known/acme-challenge/{TOKEN}"


def run_hook(records: Path, *args: str, **env: str) -> None:
    """Run the DNS hook as a client would, with the records directory set."""
    hook = ROOT / "conformance" / "dns_hook.py"
    environment = {**os.environ, "ACME_MT_TEST_DNS_RECORDS": str(records), **env}
    command = [sys.executable, str(hook), *args]
    subprocess.run(command, env=environment, check=True, timeout=30)


@pytest.fixture
def records(tmp_path: Path) -> Path:
    directory = tmp_path / "records"
    directory.mkdir()
    return directory


@pytest.fixture
def validation_dns(records: Path) -> Iterator[LoopbackDnsServer]:
    """A DNS server of the test's own, since tests here change its records."""
    server = LoopbackDnsServer(records)
    server.start()
    yield server
    server.stop()


MakeValidator = Callable[..., Validator]


@pytest.fixture
async def make_validator(
    validation_dns: LoopbackDnsServer,
) -> AsyncIterator[MakeValidator]:
    """Validators that use the test DNS server, closed after the test."""
    validators: list[Validator] = []

    def make(**settings: Any) -> Validator:
        options = {"dns_resolver": validation_dns.resolver_address, "timeout_seconds": 5.0}
        validator = Validator(ValidationSettings(**{**options, **settings}))
        validators.append(validator)
        return validator

    yield make
    for validator in validators:
        await validator.close()


async def failure(validator: Validator, kind: str, identifier: Identifier) -> AcmeProblem:
    """The problem a validation that has to fail raises."""
    with pytest.raises(AcmeProblem) as excinfo:
        await validator.validate(kind, identifier, TOKEN, KEY_AUTHORIZATION)
    return excinfo.value


# http-01


@dataclass
class Responder:
    """An http-01 responder: bodies and redirects by token, and the Hosts seen."""

    port: int = 0
    bodies: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hosts.append(request.headers.get("Host", ""))
        token = request.match_info["token"]
        if token in self.redirects:
            raise web.HTTPFound(self.redirects[token])
        if token not in self.bodies:
            raise web.HTTPNotFound()
        return web.Response(body=self.bodies[token])


@contextlib.asynccontextmanager
async def running_responder(
    host: str, context: ssl.SSLContext | None = None
) -> AsyncIterator[Responder]:
    responder = Responder()
    app = web.Application()
    app.router.add_get("/.well-known/acme-challenge/{token}", responder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, 0, ssl_context=context).start()
        responder.port = runner.addresses[0][1]
        yield responder
    finally:
        await runner.cleanup()


@pytest.fixture
async def responder() -> AsyncIterator[Responder]:
    async with running_responder("127.0.0.1") as server:
        yield server


async def test_http01_served_key_authorization_is_valid_each_time(
    make_validator: MakeValidator, responder: Responder
) -> None:
    responder.bodies[TOKEN] = KEY_AUTHORIZATION.encode() + b"\n"
    validator = make_validator(http01_port=responder.port)

    for _ in range(3):
        await validator.validate("http-01", NAME, TOKEN, KEY_AUTHORIZATION)

    assert responder.hosts == ["www.example.test"] * 3


async def test_http01_ipv4_identifier_sends_address_as_host(
    make_validator: MakeValidator, responder: Responder
) -> None:
    responder.bodies[TOKEN] = KEY_AUTHORIZATION.encode()
    validator = make_validator(http01_port=responder.port)
    identifier = Identifier("ip", "127.0.0.1")

    await validator.validate("http-01", identifier, TOKEN, KEY_AUTHORIZATION)

    assert responder.hosts == ["127.0.0.1"]


async def test_http01_ipv6_identifier_sends_bracketed_host(
    make_validator: MakeValidator,
) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")

    async with running_responder("::1") as responder:
        responder.bodies[TOKEN] = KEY_AUTHORIZATION.encode()
        validator = make_validator(http01_port=responder.port)
        identifier = Identifier("ip", "::1")
        await validator.validate("http-01", identifier, TOKEN, KEY_AUTHORIZATION)

    assert responder.hosts == ["[::1]"]


async def test_http01_redirect_to_other_name_is_followed(
    make_validator: MakeValidator, responder: Responder
) -> None:
    moved = "/.well-known/acme-challenge/moved"
    responder.redirects[TOKEN] = f"http://other.example.test:{responder.port}{moved}"
    responder.bodies["moved"] = KEY_AUTHORIZATION.encode()
    validator = make_validator(http01_port=responder.port)

    await validator.validate("http-01", NAME, TOKEN, KEY_AUTHORIZATION)

    assert responder.hosts == ["www.example.test", "other.example.test"]


async def test_http01_redirect_to_https_is_followed_without_verification(
    make_validator: MakeValidator, responder: Responder, tmp_path: Path
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _context: names.append(name)
    # Any self-signed certificate will do: https redirects are not verified.
    context.load_cert_chain(*challenge_certificate(tmp_path, x509.DNSName("x.test")))
    async with running_responder("127.0.0.1", context) as https:
        https.bodies[TOKEN] = KEY_AUTHORIZATION.encode()
        target = f"https://secure.example.test:{https.port}{CHALLENGE_PATH}"
        responder.redirects[TOKEN] = target
        validator = make_validator(http01_port=responder.port, tlsalpn01_port=https.port)

        await validator.validate("http-01", NAME, TOKEN, KEY_AUTHORIZATION)

    assert https.hosts == ["secure.example.test"]
    assert names == ["secure.example.test"]


async def test_http01_wrong_body_is_incorrect_response(
    make_validator: MakeValidator, responder: Responder
) -> None:
    responder.bodies[TOKEN] = b"not it"
    validator = make_validator(http01_port=responder.port)

    problem = await failure(validator, "http-01", NAME)

    url = f"http://www.example.test:{responder.port}{CHALLENGE_PATH}"
    assert problem.to_json() == {
        "type": "urn:ietf:params:acme:error:incorrectResponse",
        "detail": f"{url} served 6 bytes starting 'not it', "
        "not the key authorization of this challenge",
        "status": 403,
    }


async def test_http01_huge_body_is_refused_after_8_kib(
    make_validator: MakeValidator, responder: Responder
) -> None:
    body = KEY_AUTHORIZATION.encode() + b" " * (4 << 20) + b"x"
    responder.bodies[TOKEN] = body
    validator = make_validator(http01_port=responder.port)

    problem = await failure(validator, "http-01", NAME)

    assert problem.type == "incorrectResponse"
    assert "served more than 8192 bytes starting" in problem.detail


async def test_http01_missing_file_is_unauthorized(
    make_validator: MakeValidator, responder: Responder
) -> None:
    validator = make_validator(http01_port=responder.port)

    problem = await failure(validator, "http-01", NAME)

    url = f"http://www.example.test:{responder.port}{CHALLENGE_PATH}"
    assert problem.to_json() == {
        "type": "urn:ietf:params:acme:error:unauthorized",
        "detail": f"{url} answered HTTP 404, expected 200",
        "status": 403,
    }


async def test_http01_redirect_loop_is_connection_problem(
    make_validator: MakeValidator, responder: Responder
) -> None:
    responder.redirects[TOKEN] = CHALLENGE_PATH
    validator = make_validator(http01_port=responder.port)

    problem = await failure(validator, "http-01", NAME)

    assert problem.type == "connection"
    assert problem.detail.endswith("redirected more than 10 times")
    assert len(responder.hosts) == 11


async def test_http01_redirect_to_other_port_is_not_followed(
    make_validator: MakeValidator, responder: Responder
) -> None:
    elsewhere = free_port()
    responder.redirects[TOKEN] = f"http://127.0.0.1:{elsewhere}/"
    validator = make_validator(http01_port=responder.port)

    problem = await failure(validator, "http-01", NAME)

    assert problem.type == "connection"
    assert f"on port {elsewhere}; redirects may only go to ports" in problem.detail
    assert len(responder.hosts) == 1


# dns-01


async def test_dns01_record_from_lego_style_hook_is_valid(
    make_validator: MakeValidator, records: Path
) -> None:
    fqdn = "_acme-challenge.www.example.test."
    value = txt_record_value(KEY_AUTHORIZATION)
    run_hook(records, "present", fqdn, "someone-else")
    run_hook(records, "present", fqdn, value)
    validator = make_validator()

    await validator.validate("dns-01", NAME, TOKEN, KEY_AUTHORIZATION)

    run_hook(records, "cleanup", fqdn, value)
    problem = await failure(validator, "dns-01", NAME)
    assert problem.type == "incorrectResponse"
    assert "hold 'someone-else', none of them" in problem.detail


async def test_dns01_record_from_certbot_style_hook_is_valid_then_gone(
    make_validator: MakeValidator, records: Path
) -> None:
    env = {
        "CERTBOT_DOMAIN": "www.example.test",
        "CERTBOT_VALIDATION": txt_record_value(KEY_AUTHORIZATION),
    }
    run_hook(records, "present", **env)
    validator = make_validator()

    await validator.validate("dns-01", NAME, TOKEN, KEY_AUTHORIZATION)

    run_hook(records, "cleanup", **env)
    problem = await failure(validator, "dns-01", NAME)
    assert problem.to_json() == {
        "type": "urn:ietf:params:acme:error:unauthorized",
        "detail": "DNS has no TXT record at _acme-challenge.www.example.test",
        "status": 403,
    }


async def test_dns01_wrong_value_is_incorrect_response(
    make_validator: MakeValidator, records: Path
) -> None:
    wrong = txt_record_value("another.key-authorization")
    (records / "_acme-challenge.www.example.test.txt").write_text(wrong + "\n")
    validator = make_validator()

    problem = await failure(validator, "dns-01", NAME)

    assert problem.type == "incorrectResponse"
    assert repr(wrong) in problem.detail


async def test_dns01_silent_resolver_is_dns_timeout(
    make_validator: MakeValidator,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        validator = make_validator(dns_resolver=address, timeout_seconds=0.5)

        problem = await failure(validator, "dns-01", NAME)

    assert problem.type == "dns"
    query = "DNS look-up of TXT for _acme-challenge.www.example.test"
    assert problem.detail.startswith(f"{query} timed out after")


# tls-alpn-01


def challenge_certificate(
    directory: Path,
    san: x509.GeneralName,
    key_authorization: str = KEY_AUTHORIZATION,
    critical: bool = True,
) -> tuple[Path, Path]:
    """A self-signed tls-alpn-01 certificate (RFC 8737 §3) and key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls-alpn-01")])
    digest = hashlib.sha256(key_authorization.encode()).digest()
    acme_identifier = x509.UnrecognizedExtension(
        ACME_IDENTIFIER_OID, core.OctetString(digest).dump()
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(acme_identifier, critical=critical)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "alpn.pem", directory / "alpn.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = serialization.Encoding.PEM
    key_file.write_bytes(key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    return cert_file, key_file


@dataclass
class TlsServer:
    port: int
    server_names: list[str | None]


StartTls = Callable[[tuple[Path, Path], list[str]], Awaitable[TlsServer]]


@pytest.fixture
async def tls_server() -> AsyncIterator[StartTls]:
    """Starts TLS servers with a given certificate and ALPN list; records SNIs."""
    servers: list[asyncio.Server] = []

    async def start(files: tuple[Path, Path], protocols: list[str]) -> TlsServer:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*files)
        context.set_alpn_protocols(protocols)
        names: list[str | None] = []
        context.sni_callback = lambda _sock, name, _context: names.append(name)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                await reader.read()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        return TlsServer(server.sockets[0].getsockname()[1], names)

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_tlsalpn01_challenge_certificate_is_valid_with_name_as_sni(
    make_validator: MakeValidator, tls_server: StartTls, tmp_path: Path
) -> None:
    files = challenge_certificate(tmp_path, x509.DNSName("www.example.test"))
    server = await tls_server(files, [ACME_TLS_1])
    validator = make_validator(tlsalpn01_port=server.port)

    await validator.validate("tls-alpn-01", NAME, TOKEN, KEY_AUTHORIZATION)

    assert server.server_names == ["www.example.test"]


async def test_tlsalpn01_ip_identifier_uses_reverse_name_as_sni(
    make_validator: MakeValidator, tls_server: StartTls, tmp_path: Path
) -> None:
    address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    server = await tls_server(challenge_certificate(tmp_path, address), [ACME_TLS_1])
    validator = make_validator(tlsalpn01_port=server.port)
    identifier = Identifier("ip", "127.0.0.1")

    await validator.validate("tls-alpn-01", identifier, TOKEN, KEY_AUTHORIZATION)

    assert server.server_names == ["1.0.0.127.in-addr.arpa"]


@pytest.mark.parametrize(
    ("certificate", "protocols", "kind", "detail"),
    [
        (
            {"key_authorization": "other.ka"},
            [ACME_TLS_1],
            "incorrectResponse",
            ": the acmeIdentifier extension holds "
            f"{hashlib.sha256(b'other.ka').hexdigest()}, not SHA-256 of the key "
            "authorization of this challenge",
        ),
        (
            {"critical": False},
            [ACME_TLS_1],
            "incorrectResponse",
            ": the acmeIdentifier extension is not critical",
        ),
        (
            {"san": x509.DNSName("other.example.test")},
            [ACME_TLS_1],
            "incorrectResponse",
            ": the certificate's subjectAltName must hold exactly "
            "www.example.test, but holds other.example.test",
        ),
        (
            {},
            ["http/1.1"],
            "tls",
            " did not negotiate ALPN acme-tls/1 (negotiated nothing)",
        ),
    ],
)
async def test_tlsalpn01_wrong_answer_is_refused(
    make_validator: MakeValidator,
    tls_server: StartTls,
    tmp_path: Path,
    certificate: dict[str, Any],
    protocols: list[str],
    kind: str,
    detail: str,
) -> None:
    options = {"san": x509.DNSName("www.example.test"), **certificate}
    server = await tls_server(challenge_certificate(tmp_path, **options), protocols)
    validator = make_validator(tlsalpn01_port=server.port)

    problem = await failure(validator, "tls-alpn-01", NAME)

    peer = f"127.0.0.1:{server.port} (SNI www.example.test)"
    assert (problem.type, problem.detail) == (kind, peer + detail)


async def test_tlsalpn01_plain_http_server_is_tls_problem(
    make_validator: MakeValidator, responder: Responder
) -> None:
    validator = make_validator(tlsalpn01_port=responder.port)

    problem = await failure(validator, "tls-alpn-01", NAME)

    peer = f"127.0.0.1:{responder.port} (SNI www.example.test)"
    assert problem.to_json() == {
        "type": "urn:ietf:params:acme:error:tls",
        "detail": f"TLS handshake with {peer} failed: wrong version number",
        "status": 400,
    }


# every challenge


@pytest.mark.parametrize(
    ("kind", "name", "rdtype"),
    [
        ("http-01", "www.example.test", "A"),
        ("tls-alpn-01", "www.example.test", "A"),
        ("dns-01", "_acme-challenge.www.example.test", "TXT"),
    ],
)
async def test_nxdomain_is_dns_problem(
    make_validator: MakeValidator, records: Path, kind: str, name: str, rdtype: str
) -> None:
    (records / "nxdomain.txt").write_text(f"{name}\n")
    # Nothing listens on these ports: a connection attempt would show as one.
    validator = make_validator(http01_port=free_port(), tlsalpn01_port=free_port())

    problem = await failure(validator, kind, NAME)

    assert problem.to_json() == {
        "type": "urn:ietf:params:acme:error:dns",
        "detail": f"DNS look-up of {rdtype} for {name}: the name does not exist (NXDOMAIN)",
        "status": 400,
    }


@pytest.mark.parametrize(
    ("kind", "detail"),
    [
        (
            "http-01",
            "cannot connect to 127.0.0.1:{port} for "
            "http://www.example.test:{port}" + CHALLENGE_PATH + ": Connection refused",
        ),
        (
            "tls-alpn-01",
            "cannot connect to 127.0.0.1:{port} (SNI www.example.test): Connection refused",
        ),
    ],
)
async def test_nothing_listening_is_connection_problem(
    make_validator: MakeValidator, kind: str, detail: str
) -> None:
    port = free_port()
    validator = make_validator(http01_port=port, tlsalpn01_port=port)

    problem = await failure(validator, kind, NAME)

    assert problem.to_json() == {
        "type": "urn:ietf:params:acme:error:connection",
        "detail": detail.format(port=port),
        "status": 400,
    }


# CAA look-ups, for the policy that comes later


async def test_resolve_caa_returns_raw_records_and_nothing_for_nxdomain(
    make_validator: MakeValidator, records: Path
) -> None:
    (records / "caa.json").write_text(
        '{"example.test.": [[0, "issue", "ca.test; accounturi=x"], [128, "tbs", "?"]]}'
    )
    (records / "nxdomain.txt").write_text("gone.example.test\n")
    resolver = make_validator().resolver

    assert await resolver.resolve_caa("example.test") == [
        (0, "issue", b"ca.test; accounturi=x"),
        (128, "tbs", b"?"),
    ]
    assert await resolver.resolve_caa("www.example.test") == []
    assert await resolver.resolve_caa("gone.example.test") == []


async def test_resolve_caa_keeps_a_value_whole_past_a_nul_byte(
    make_validator: MakeValidator, records: Path
) -> None:
    (records / "caa.json").write_text('{"nul.example.test.": [[0, "issue", "ca.test\\u0000evil"]]}')
    resolver = make_validator().resolver

    assert await resolver.resolve_caa("nul.example.test") == [(0, "issue", b"ca.test\x00evil")]
