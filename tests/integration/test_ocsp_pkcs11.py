"""OCSP with every key on SoftHSM2: the delegated signer's key is generated on the
tenant's token, responses verify with openssl, and a revocation is re-signed there."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import josepy as jose
import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from conformance.dns_server import LoopbackDnsServer
from tests.integration.test_ocsp_live import (
    ask,
    issue_leaf,
    request_der,
    responder_url,
    status_line,
)
from tests.support.live import Http01Responder, LiveServer, running_server
from tests.support.softhsm import SOFTHSM_MODULE, write_softhsm_conf

pytestmark = pytest.mark.asyncio(loop_scope="function")

SLUG = "ocsp-hsm"


@pytest.fixture(scope="module")
def hsm_server(
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: LoopbackDnsServer,
    http01_responder: Http01Responder,
    tlsalpn_port: int,
) -> Iterator[LiveServer]:
    # A SoftHSM of its own: the session's SoftHSM belongs to one server only,
    # which keeps the PINs of the tokens it made.
    if not Path(SOFTHSM_MODULE).exists():
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    softhsm = write_softhsm_conf(tmp_path_factory.mktemp("ocsp-softhsm"))
    extra_env = {
        **softhsm.env,
        "ACME_MT_KEYSTORE_BACKEND": "pkcs11",
        "ACME_MT_KEYSTORE_MODULE": softhsm.module,
    }
    server_iter = running_server(
        tmp_path_factory.mktemp("acme-mt-ocsp-hsm"),
        dns_server.resolver_address,
        http01_responder.port,
        tlsalpn_port,
        extra_env,
    )
    server = next(server_iter)
    server.create_tenant(SLUG, "require_eab = false\n")
    yield server
    next(server_iter, None)


async def test_ocsp_signer_on_a_token_answers_good_then_revoked(
    hsm_server: LiveServer, http01_responder: Http01Responder, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        issued = await issue_leaf(hsm_server, session, http01_responder, SLUG, tmp_path)
        result = ask(issued, responder_url(hsm_server, SLUG))
        assert "Response verify OK" in result.stderr, result.stderr
        assert status_line(result, issued.leaf_pem) == f"{issued.leaf_pem}: good"

        payload = {"certificate": jose.b64encode(issued.der).decode(), "reason": 1}
        reply = await issued.client.post(issued.client.directory["revokeCert"], payload)
        assert reply.status == 200, reply.body
        status = ocsp.OCSPCertStatus.GOOD
        for _ in range(100):
            async with session.post(
                responder_url(hsm_server, SLUG), data=request_der(issued)
            ) as resp:
                response = ocsp.load_der_ocsp_response(await resp.read())
            status = response.certificate_status
            if status != ocsp.OCSPCertStatus.GOOD:
                break
            await asyncio.sleep(0.1)
        assert status == ocsp.OCSPCertStatus.REVOKED
        assert response.revocation_reason == x509.ReasonFlags.key_compromise

    result = ask(issued, responder_url(hsm_server, SLUG))
    assert "Response verify OK" in result.stderr, result.stderr
    assert status_line(result, issued.leaf_pem) == f"{issued.leaf_pem}: revoked"
    # The file key store would have written ``ocsp-<time>-<hex>.key``; the token holds it.
    assert not [path for path in hsm_server.data_dir.rglob("ocsp-*.key") if path.is_file()]
