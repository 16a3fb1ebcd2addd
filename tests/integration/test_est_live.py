"""EST (RFC 7030, RFC 8951) against a live server, with a Python client on aiohttp:
every operation, client certificates and Basic credentials, cross-tenant refusals,
labels that answer like hidden tenants, and bad input that never issues and never
yields a 500."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from acme_mt.backends import open_store_backend
from acme_mt.config import load_settings
from tests.support.acme import AcmeTestClient
from tests.support.est import Answer, Key, client_context, est_post, make_csr
from tests.support.live import LiveServer

ALPHA_POLICY = """
require_eab = false
allowed_suffixes = ["alpha.test"]
max_identifiers = 3
key_types = ["ec-p256", "rsa-2048"]
"""


@dataclass(frozen=True)
class Credential:
    id: str
    username: str
    password: str

    @property
    def auth(self) -> str:
        """The Authorization header value of HTTP Basic."""
        return aiohttp.encode_basic_auth(self.username, self.password)


@dataclass(frozen=True)
class EstWorld:
    server: LiveServer
    alpha: Credential
    beta: Credential


def credential(server: LiveServer, slug: str) -> Credential:
    body = server.cli_json("est", "credential", "create", slug)
    return Credential(body["id"], body["username"], body["password"])


@pytest.fixture(scope="module")
def world(live_server: LiveServer) -> EstWorld:
    live_server.create_tenant("est-alpha", ALPHA_POLICY)
    live_server.create_tenant("est-beta", "require_eab = false\n")
    live_server.create_tenant("est-hidden", "require_eab = false\n")
    live_server.cli("tenant", "suspend", "est-hidden")
    return EstWorld(
        live_server, credential(live_server, "est-alpha"), credential(live_server, "est-beta")
    )


def current_time() -> datetime:
    return datetime.now(UTC)


def est_url(server: LiveServer, label: str, operation: str, *, base_form: bool = False) -> str:
    if base_form:
        return f"{server.https_url}/{label}/.well-known/est/{operation}"
    return f"{server.https_url}/.well-known/est/{label}/{operation}"


async def est_get(session: aiohttp.ClientSession, server: LiveServer, url: str) -> Answer:
    async with session.get(url, ssl=server.ssl_context()) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def tenant_ca(server: LiveServer, slug: str) -> x509.Certificate:
    with urllib.request.urlopen(f"{server.http_url}/{slug}/ca.crt", timeout=10) as resp:
        return x509.load_der_x509_certificate(resp.read())


async def audit_records(server: LiveServer, slug: str) -> int:
    """How many audit records the tenant has: any write (an issuance included) adds some.

    Read from the tenant's own store beside the server (SQLite in WAL mode).
    """
    stores = open_store_backend(load_settings(None, str(server.data_dir), environ=server.env))
    registry = await stores.open_registry()
    try:
        record = await registry.get_tenant(slug)
        assert record is not None
        store = await stores.open_tenant_store(record.id, record.slug)
        try:
            return len(await store.list_audit(0, 100_000))
        finally:
            await store.close()
    finally:
        await registry.close()
        await stores.close()


async def enroll(
    session: aiohttp.ClientSession, world: EstWorld, names: list[str], key: Key | None = None
) -> tuple[x509.Certificate, Key]:
    body, key = make_csr(names, key=key, common_name=names[0])
    url = est_url(world.server, "est-alpha", "simpleenroll")
    answer = await est_post(session, world.server, url, body, auth=world.alpha.auth)
    [certificate] = answer.certificates()
    return certificate, key


async def test_cacerts_is_the_tenant_ca_and_root_at_both_urls(
    world: EstWorld, http_session: aiohttp.ClientSession
) -> None:
    server = world.server
    answer = await est_get(http_session, server, est_url(server, "est-alpha", "cacerts"))
    other_form = await est_get(
        http_session, server, est_url(server, "est-alpha", "cacerts", base_form=True)
    )

    assert answer.headers["Content-Transfer-Encoding"] == "base64"
    subjects = {c.subject for c in answer.certificates()}
    root = x509.load_pem_x509_certificate(server.root_pem_path.read_bytes())
    assert subjects == {tenant_ca(server, "est-alpha").subject, root.subject}
    assert other_form.certificates() == answer.certificates()


async def test_csrattrs_names_the_tenant_key_types(
    world: EstWorld, http_session: aiohttp.ClientSession
) -> None:
    server = world.server
    answer = await est_get(http_session, server, est_url(server, "est-alpha", "csrattrs"))
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/csrattrs"
    der = base64.b64decode(answer.body)
    # SEQUENCE { SEQUENCE { id-ecPublicKey, SET { prime256v1 } }, ecdsa-with-SHA256,
    #            rsaEncryption, sha256WithRSAEncryption }
    assert der.hex() == (
        "3037"
        "3015"
        "06072a8648ce3d0201"
        "310a"
        "06082a8648ce3d030107"
        "06082a8648ce3d040302"
        "06092a864886f70d010101"
        "06092a864886f70d01010b"
    )


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
async def test_simpleenroll_with_basic_credentials_issues_under_the_tenant_ca(
    world: EstWorld, http_session: aiohttp.ClientSession, key_type: str
) -> None:
    key: Key = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "ec-p256"
        else rsa.generate_private_key(65537, 2048)
    )
    certificate, _ = await enroll(http_session, world, ["dev.alpha.test", "www.alpha.test"], key)

    certificate.verify_directly_issued_by(tenant_ca(world.server, "est-alpha"))
    assert certificate.public_key() == key.public_key()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dev.alpha.test", "www.alpha.test"]


async def test_simplereenroll_with_the_client_certificate_renews_it(
    world: EstWorld, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    current, key = await enroll(http_session, world, ["renew.alpha.test"])
    body, _ = make_csr(["renew.alpha.test"], key=key, common_name="renew.alpha.test")
    tls = client_context(world.server, tmp_path, current, key)

    answer = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-alpha", "simplereenroll"),
        body,
        client_tls=tls,
    )

    [renewed] = answer.certificates()
    assert renewed.serial_number != current.serial_number
    assert renewed.subject == current.subject
    renewed.verify_directly_issued_by(tenant_ca(world.server, "est-alpha"))


async def test_simplereenroll_with_basic_credentials_only_is_403(
    world: EstWorld, http_session: aiohttp.ClientSession
) -> None:
    body, _ = make_csr(["renew.alpha.test"], common_name="renew.alpha.test")
    answer = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-alpha", "simplereenroll"),
        body,
        auth=world.alpha.auth,
    )
    assert (answer.status, answer.body) == (
        403,
        b"simplereenroll needs the current certificate: no client certificate was presented\n",
    )


async def test_simplereenroll_with_another_san_is_400(
    world: EstWorld, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    current, key = await enroll(http_session, world, ["one.alpha.test"])
    body, _ = make_csr(["one.alpha.test", "two.alpha.test"], key=key, common_name="one.alpha.test")
    before = await audit_records(world.server, "est-alpha")
    answer = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-alpha", "simplereenroll"),
        body,
        client_tls=client_context(world.server, tmp_path, current, key),
    )
    assert (answer.status, answer.body) == (
        400,
        b"the CSR's subjectAltName differs from the current certificate's\n",
    )
    assert await audit_records(world.server, "est-alpha") == before


async def test_serverkeygen_returns_a_pkcs8_key_and_its_certificate(
    world: EstWorld, http_session: aiohttp.ClientSession
) -> None:
    body, _ = make_csr(["keygen.alpha.test"], common_name="keygen.alpha.test")
    answer = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-alpha", "serverkeygen"),
        body,
        auth=world.alpha.auth,
    )

    assert answer.status == 200, answer.body
    raw = f"Content-Type: {answer.headers['Content-Type']}\r\n\r\n".encode() + answer.body
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    parts = list(message.iter_parts())  # type: ignore[attr-defined]
    assert [(p.get_content_type(), p.get_param("smime-type")) for p in parts] == [
        ("application/pkcs8", None),
        ("application/pkcs7-mime", "certs-only"),
    ]
    key = serialization.load_der_private_key(parts[0].get_payload(decode=True), None)
    [certificate] = pkcs7.load_der_pkcs7_certificates(parts[1].get_payload(decode=True))
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert certificate.public_key() == key.public_key()
    certificate.verify_directly_issued_by(tenant_ca(world.server, "est-alpha"))


async def test_credentials_of_one_tenant_at_another_are_401_and_issue_nothing(
    world: EstWorld, http_session: aiohttp.ClientSession
) -> None:
    body, _ = make_csr(["dev.alpha.test"])
    before = await audit_records(world.server, "est-beta")
    for operation in ("simpleenroll", "serverkeygen"):
        answer = await est_post(
            http_session,
            world.server,
            est_url(world.server, "est-beta", operation),
            body,
            auth=world.alpha.auth,
        )
        assert (answer.status, answer.body) == (401, b"unknown username or wrong password\n")
        assert answer.headers["WWW-Authenticate"] == 'Basic realm="EST est-beta", charset="UTF-8"'
    assert await audit_records(world.server, "est-beta") == before


async def test_client_certificate_of_one_tenant_at_another_is_refused(
    world: EstWorld, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    current, key = await enroll(http_session, world, ["cross.alpha.test"])
    tls = client_context(world.server, tmp_path, current, key)
    body, _ = make_csr(["cross.alpha.test"], key=key, common_name="cross.alpha.test")
    before = await audit_records(world.server, "est-beta")

    enrolled = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-beta", "simpleenroll"),
        body,
        client_tls=tls,
    )
    renewed = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-beta", "simplereenroll"),
        body,
        client_tls=tls,
    )

    assert (enrolled.status, enrolled.body) == (
        401,
        b"send enrollment credentials; the client certificate was not issued by this CA\n",
    )
    assert (renewed.status, renewed.body) == (
        403,
        b"simplereenroll needs the current certificate: "
        b"the client certificate was not issued by this CA\n",
    )
    assert await audit_records(world.server, "est-beta") == before


@pytest.mark.parametrize("operation", ["cacerts", "csrattrs", "simpleenroll", "serverkeygen"])
@pytest.mark.parametrize("base_form", [False, True])
async def test_unknown_label_answers_like_a_hidden_tenant(
    world: EstWorld, http_session: aiohttp.ClientSession, operation: str, base_form: bool
) -> None:
    answers = []
    for label in ("est-hidden", "est-never-made", "acme"):
        url = est_url(world.server, label, operation, base_form=base_form)
        if operation in ("cacerts", "csrattrs"):
            answer = await est_get(http_session, world.server, url)
        else:
            body, _ = make_csr(["dev.alpha.test"])
            answer = await est_post(http_session, world.server, url, body, auth=world.alpha.auth)
        answers.append((answer.status, answer.headers["Content-Type"], answer.body))
    assert answers == [(404, "text/plain; charset=utf-8", b"Not Found")] * 3


BAD_INPUT = {
    "not base64": (
        "application/pkcs10",
        b"this is not base64!",
        "the request body is not valid base64",
    ),
    "empty body": ("application/pkcs10", b"", "the request body is empty"),
    "wrong content type": (
        "text/plain",
        None,
        "the request must have Content-Type application/pkcs10, not text/plain",
    ),
    "no content type": (None, None, "the request has no Content-Type; send application/pkcs10"),
    "base64 of a non-CSR": (
        "application/pkcs10",
        base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x02"),
        "the request body is not a PKCS#10 certificate request",
    ),
    "bad signature": ("application/pkcs10", "broken", "the CSR's signature does not verify"),
    "name outside the suffixes": (
        "application/pkcs10",
        ["dev.example.org"],
        "dev.example.org: policy allowed_suffixes permits only names under alpha.test",
    ),
    "too many names": (
        "application/pkcs10",
        ["a.alpha.test", "b.alpha.test", "c.alpha.test", "d.alpha.test"],
        "policy max_identifiers allows at most 3 names; the CSR asks for 4",
    ),
    "key type not allowed": (
        "application/pkcs10",
        "p384",
        "policy key_types allows ec-p256, rsa-2048; the CSR key is ec-p384",
    ),
}


def bad_body(spec: object) -> bytes:
    if isinstance(spec, bytes):
        return spec
    if isinstance(spec, list):
        return make_csr(spec)[0]
    if spec == "p384":
        return make_csr(["dev.alpha.test"], key=ec.generate_private_key(ec.SECP384R1()))[0]
    body = make_csr(["dev.alpha.test"])[0]
    if spec == "broken":
        der = bytearray(base64.b64decode(body))
        der[-3] ^= 0x01
        return base64.b64encode(bytes(der))
    return body


BAD_INPUT_CASES = [
    pytest.param(operation, case, id=f"{operation}-{case}")
    for operation in ("simpleenroll", "serverkeygen")
    for case in sorted(BAD_INPUT)
    # serverkeygen makes a key of an allowed type whatever the CSR's key is.
    if not (operation == "serverkeygen" and case == "key type not allowed")
]


@pytest.mark.parametrize(("operation", "case"), BAD_INPUT_CASES)
async def test_bad_input_is_400_with_its_reason_and_issues_nothing(
    world: EstWorld, http_session: aiohttp.ClientSession, operation: str, case: str
) -> None:
    content_type, spec, message = BAD_INPUT[case]
    before = await audit_records(world.server, "est-alpha")
    answer = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-alpha", operation),
        bad_body(spec),
        auth=world.alpha.auth,
        content_type=content_type,
    )
    assert (answer.status, answer.headers["Content-Type"], answer.body.decode()) == (
        400,
        "text/plain; charset=utf-8",
        message + "\n",
    )
    assert await audit_records(world.server, "est-alpha") == before


async def test_body_over_64_kib_is_413(
    world: EstWorld, http_session: aiohttp.ClientSession
) -> None:
    answer = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-alpha", "simpleenroll"),
        b"A" * (64 * 1024 + 4),
        auth=world.alpha.auth,
    )
    assert (answer.status, answer.body) == (413, b"the request body is larger than 65536 bytes\n")


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (None, b"send enrollment credentials; no client certificate was presented\n"),
        (aiohttp.encode_basic_auth("est-nobody", "guess"), b"unknown username or wrong password\n"),
        ("Bearer abc", b"the Authorization header is not HTTP Basic\n"),
        ("Basic !!notbase64!!", b"the Authorization header is not HTTP Basic\n"),
        (
            "Basic " + base64.b64encode(b"\xff\xfe").decode(),
            b"the Authorization header is not HTTP Basic\n",
        ),
        (
            "Basic " + base64.b64encode(b"no-colon").decode(),
            b"the Basic credentials have no password\n",
        ),
    ],
)
async def test_missing_or_unknown_credentials_are_401_with_a_basic_challenge(
    world: EstWorld,
    http_session: aiohttp.ClientSession,
    auth: str | None,
    message: bytes,
) -> None:
    body, _ = make_csr(["dev.alpha.test"])
    answer = await est_post(
        http_session,
        world.server,
        est_url(world.server, "est-alpha", "simpleenroll"),
        body,
        auth=auth,
    )
    assert (answer.status, answer.body) == (401, message)
    assert answer.headers["WWW-Authenticate"].startswith("Basic realm=")


async def test_revoked_credential_is_401(
    world: EstWorld, http_session: aiohttp.ClientSession
) -> None:
    revoked = credential(world.server, "est-alpha")
    url = est_url(world.server, "est-alpha", "simpleenroll")
    body, _ = make_csr(["dev.alpha.test"])
    first = await est_post(http_session, world.server, url, body, auth=revoked.auth)
    assert first.status == 200, first.body

    world.server.cli("est", "credential", "revoke", "est-alpha", revoked.id)
    second = await est_post(http_session, world.server, url, body, auth=revoked.auth)

    assert (second.status, second.body) == (401, b"unknown username or wrong password\n")


async def test_revoked_est_certificate_cannot_reenroll_and_is_on_the_crl(
    world: EstWorld, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = world.server
    current, key = await enroll(http_session, world, ["revoke.alpha.test"])
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    by_key = AcmeTestClient(
        http_session,
        server.directory_url("est-alpha"),
        server.ssl_context(),
        key=jose.JWKEC(key=key),
    )
    await by_key.load_directory()
    der = current.public_bytes(serialization.Encoding.DER)
    payload = {"certificate": jose.b64encode(der).decode(), "reason": 1}
    revoked = await by_key.post(by_key.directory["revokeCert"], payload, use_jwk=True)
    assert revoked.status == 200, revoked.body

    body, _ = make_csr(["revoke.alpha.test"], key=key, common_name="revoke.alpha.test")
    answer = await est_post(
        http_session,
        server,
        est_url(server, "est-alpha", "simplereenroll"),
        body,
        client_tls=client_context(server, tmp_path, current, key),
    )
    assert (answer.status, answer.body) == (
        403,
        b"simplereenroll needs the current certificate: the client certificate is revoked\n",
    )

    deadline = time.monotonic() + 30
    listed: set[int] = set()
    while time.monotonic() < deadline:
        async with http_session.get(f"{server.http_url}/est-alpha/crl/0.crl") as resp:
            if resp.status == 200:
                crl = x509.load_der_x509_crl(await resp.read())
                listed = {entry.serial_number for entry in crl}
        if current.serial_number in listed:
            break
        await asyncio.sleep(0.5)
    assert current.serial_number in listed


async def test_client_certificate_of_an_unknown_ca_fails_the_handshake(
    world: EstWorld, http_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    stranger = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(current_time() - timedelta(hours=1))
        .not_valid_after(current_time() + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    body, _ = make_csr(["dev.alpha.test"])
    before = await audit_records(world.server, "est-alpha")

    with pytest.raises(aiohttp.ClientError):
        await est_post(
            http_session,
            world.server,
            est_url(world.server, "est-alpha", "simpleenroll"),
            body,
            auth=world.alpha.auth,
            client_tls=client_context(world.server, tmp_path, stranger, key),
        )

    assert await audit_records(world.server, "est-alpha") == before
