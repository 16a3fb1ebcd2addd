"""ACME end to end against a live server: issuance, renewal, revocation, accounts."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from acme_mt.jws import thumbprint
from tests.support.acme import AcmeTestClient, make_csr
from tests.support.flow import authorize_http01, issue, random_name, wait_status
from tests.support.live import Http01Responder, LiveServer

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def client_for(
    live_server: LiveServer, session: aiohttp.ClientSession, slug: str = "default"
) -> AcmeTestClient:
    client = AcmeTestClient(session, live_server.directory_url(slug), live_server.ssl_context())
    await client.load_directory()
    return client


def openssl_verify(tmp_path: Path, chain_pem: str, ca_pem: str) -> subprocess.CompletedProcess[str]:
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(certs[0].public_bytes(Encoding.PEM))
    ca = tmp_path / "ca.pem"
    ca.write_text(ca_pem)
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(leaf)], capture_output=True, text=True
    )


async def test_issue_download_and_verify_chain(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tmp_path: Path,
) -> None:
    client = await client_for(live_server, http_session)
    reply = await client.new_account()
    assert reply.status == 201
    assert reply.location and reply.location.startswith(
        live_server.https_url + "/default/acme/acct/"
    )
    assert reply.headers["Replay-Nonce"]
    name = random_name()
    _order, _url, chain = await issue(client, http01_responder, [name])
    certs = x509.load_pem_x509_certificates(chain.encode())
    assert len(certs) == 3
    leaf = certs[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [name]
    leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    async with http_session.get(f"{live_server.http_url}/default/ca.pem") as resp:
        ca_chain = await resp.text()
    result = openssl_verify(tmp_path, chain, ca_chain)
    assert result.returncode == 0, result.stderr


async def test_existing_account_returns_200_with_location(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await client_for(live_server, http_session)
    first = await client.new_account()
    second = await client.new_account()
    assert (first.status, second.status) == (201, 200)
    assert first.location == second.location
    lookup = await client.post(
        client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True
    )
    assert lookup.status == 200 and lookup.location == first.location


async def test_only_return_existing_unknown_key_is_account_does_not_exist(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await client_for(live_server, http_session)
    reply = await client.post(
        client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True
    )
    assert reply.status == 400
    assert reply.json() == {
        "type": "urn:ietf:params:acme:error:accountDoesNotExist",
        "detail": "No account exists for this key",
        "status": 400,
    }


async def test_revoke_by_account_then_again_is_already_revoked(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    _order, _url, chain = await issue(client, http01_responder, [random_name()])
    der = x509.load_pem_x509_certificates(chain.encode())[0].public_bytes(Encoding.DER)
    payload = {"certificate": jose.b64encode(der).decode(), "reason": 4}
    first = await client.post(client.directory["revokeCert"], payload)
    assert first.status == 200, first.body
    second = await client.post(client.directory["revokeCert"], payload)
    assert second.status == 400
    assert second.json()["type"] == "urn:ietf:params:acme:error:alreadyRevoked"


async def test_revoke_by_certificate_key(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    name = random_name()
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    order = reply.json()
    await authorize_http01(client, http01_responder, order["authorizations"][0])
    csr, cert_key = make_csr([name])
    await client.post(order["finalize"], {"csr": jose.b64encode(csr).decode()})
    order = await wait_status(client, reply.location, {"valid"})
    chain = (await client.post(order["certificate"])).body
    der = x509.load_pem_x509_certificates(chain)[0].public_bytes(Encoding.DER)
    payload = {"certificate": jose.b64encode(der).decode(), "reason": 1}
    stranger = AcmeTestClient(http_session, client.directory_url, client.ssl_context)
    stranger.directory = client.directory
    refused = await stranger.post(client.directory["revokeCert"], payload, use_jwk=True)
    assert refused.status == 403
    by_key = AcmeTestClient(
        http_session, client.directory_url, client.ssl_context, key=jose.JWKEC(key=cert_key)
    )
    by_key.directory = client.directory
    accepted = await by_key.post(client.directory["revokeCert"], payload, use_jwk=True)
    assert accepted.status == 200, accepted.body


async def test_bad_revocation_reason(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    _o, _u, chain = await issue(client, http01_responder, [random_name()])
    der = x509.load_pem_x509_certificates(chain.encode())[0].public_bytes(Encoding.DER)
    reply = await client.post(
        client.directory["revokeCert"], {"certificate": jose.b64encode(der).decode(), "reason": 7}
    )
    assert reply.status == 400
    assert reply.json()["type"] == "urn:ietf:params:acme:error:badRevocationReason"


async def test_finalize_before_ready_is_order_not_ready(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    name = random_name()
    order = (
        await client.post(
            client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
        )
    ).json()
    csr, _ = make_csr([name])
    reply = await client.post(order["finalize"], {"csr": jose.b64encode(csr).decode()})
    assert reply.status == 403
    assert reply.json()["type"] == "urn:ietf:params:acme:error:orderNotReady"


async def test_csr_names_must_match_order(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    name = random_name()
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    order = reply.json()
    await authorize_http01(client, http01_responder, order["authorizations"][0])
    csr, _ = make_csr([name, "other.example.test"])
    bad = await client.post(order["finalize"], {"csr": jose.b64encode(csr).decode()})
    assert bad.status == 400
    body = bad.json()
    assert body["type"] == "urn:ietf:params:acme:error:badCSR"
    assert "other.example.test" in body["detail"]
    # The order is still ready: a bad CSR leaves nothing half-written.
    assert (await client.post(reply.location)).json()["status"] == "ready"


async def test_csr_with_account_key_is_refused(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    name = random_name()
    order = (
        await client.post(
            client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
        )
    ).json()
    await authorize_http01(client, http01_responder, order["authorizations"][0])
    csr, _ = make_csr([name], key=client.key.key._wrapped)
    reply = await client.post(order["finalize"], {"csr": jose.b64encode(csr).decode()})
    assert reply.status == 400
    assert reply.json()["detail"] == "The certificate key must differ from the account key"


async def test_renewal_reuses_valid_authorization(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    name = random_name()
    first, _u, chain1 = await issue(client, http01_responder, [name])
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    assert reply.json()["status"] == "ready"
    assert reply.json()["authorizations"] == first["authorizations"]
    _second, _u2, chain2 = await issue(client, http01_responder, [name])
    assert chain1 != chain2


async def _pending_http01(
    client: AcmeTestClient, responder: Http01Responder
) -> tuple[str, dict[str, Any]]:
    """A new order's authorization URL and its http-01 challenge, answered by ``responder``."""
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": random_name()}]}
    )
    authz_url = reply.json()["authorizations"][0]
    authz = (await client.post(authz_url)).json()
    challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
    token = challenge["token"]
    responder.tokens[token] = f"{token}.{thumbprint(client.key)}"
    return authz_url, challenge


async def test_a_quick_validation_answers_the_challenge_post_with_its_outcome(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    authz_url, challenge = await _pending_http01(client, http01_responder)

    answer = await client.post(challenge["url"], {})

    assert answer.status == 200
    assert answer.json()["status"] == "valid"
    assert "Retry-After" not in answer.headers
    authz = (await client.post(authz_url)).json()
    assert authz["status"] == "valid"


async def test_a_slow_validation_is_processing_for_every_reader_until_it_ends(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    authz_url, challenge = await _pending_http01(client, http01_responder)
    http01_responder.slow_tokens.add(challenge["token"])
    http01_responder.delay = 2.0  # past the server's 0.5 s wait

    answer = await client.post(challenge["url"], {})

    assert answer.status == 200
    assert answer.json()["status"] == "processing"
    assert int(answer.headers["Retry-After"]) >= 1
    authz = (await client.post(authz_url)).json()
    assert authz["status"] == "pending"
    seen = next(c for c in authz["challenges"] if c["url"] == challenge["url"])
    assert seen["status"] == "processing"
    again = await client.post(challenge["url"], {})
    assert again.json()["status"] == "processing"
    final = await wait_status(client, authz_url, {"valid", "invalid"})
    assert final["status"] == "valid"


async def test_failed_http01_makes_authorization_and_order_invalid(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": random_name()}]}
    )
    order_url = reply.location
    authz_url = reply.json()["authorizations"][0]
    authz = (await client.post(authz_url)).json()
    challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
    answer = await client.post(challenge["url"], {})
    assert answer.status == 200
    assert f'<{authz_url}>;rel="up"' in answer.headers.getall("Link")
    final = await wait_status(client, authz_url, {"invalid", "valid"})
    assert final["status"] == "invalid"
    failed = next(c for c in final["challenges"] if c["type"] == "http-01")
    assert failed["error"]["type"] in (
        "urn:ietf:params:acme:error:incorrectResponse",
        "urn:ietf:params:acme:error:unauthorized",
    )
    order = (await client.post(order_url)).json()
    assert order["status"] == "invalid"


async def test_account_update_deactivate_and_orders_list(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account(contact=["mailto:a@example.test"])
    assert client.kid
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": random_name()}]}
    )
    account = (await client.post(client.kid)).json()
    orders = (await client.post(account["orders"])).json()
    assert orders["orders"] == [reply.location]
    updated = await client.post(client.kid, {"contact": ["mailto:b@example.test"]})
    assert updated.json()["contact"] == ["mailto:b@example.test"]
    bad = await client.post(client.kid, {"contact": ["tel:+1555"]})
    assert bad.json()["type"] == "urn:ietf:params:acme:error:unsupportedContact"
    gone = await client.post(client.kid, {"status": "deactivated"})
    assert gone.json()["status"] == "deactivated"
    after = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": random_name()}]}
    )
    assert after.status == 403
    assert after.json()["type"] == "urn:ietf:params:acme:error:unauthorized"


async def test_key_change_moves_account_to_new_key(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    new_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    url = client.directory["keyChange"]
    inner = client.sign(
        url,
        {"account": client.kid, "oldKey": client.key.public_key().to_partial_json()},
        None,
        use_jwk=True,
        key=new_key,
    )
    reply = await client.post(url, inner)
    assert reply.status == 200, reply.body
    old_kid = client.kid
    client.key = new_key
    assert (await client.post(old_kid)).status == 200
    holder = AcmeTestClient(http_session, client.directory_url, client.ssl_context, key=new_key)
    holder.directory = client.directory
    found = await holder.post(
        client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True
    )
    assert found.location == old_kid


async def test_key_change_to_key_in_use_is_conflict(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    first = await client_for(live_server, http_session)
    second = await client_for(live_server, http_session)
    await first.new_account()
    await second.new_account()
    url = first.directory["keyChange"]
    inner = first.sign(
        url,
        {"account": first.kid, "oldKey": first.key.public_key().to_partial_json()},
        None,
        use_jwk=True,
        key=second.key,
    )
    reply = await first.post(url, inner)
    assert reply.status == 409
    assert reply.location == second.kid


async def test_preauthorization_and_deactivation(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await client_for(live_server, http_session)
    await client.new_account()
    name = random_name()
    reply = await client.post(
        client.directory["newAuthz"], {"identifier": {"type": "dns", "value": name}}
    )
    assert reply.status == 201
    authz_url = reply.location
    await authorize_http01(client, http01_responder, authz_url)
    order = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    assert order.json()["status"] == "ready"
    gone = await client.post(authz_url, {"status": "deactivated"})
    assert gone.json()["status"] == "deactivated"
    assert (await client.post(order.location)).json()["status"] == "invalid"


async def test_wildcard_gets_only_dns01_and_validates(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    dns_records: Path,
) -> None:
    from tests.support.flow import dns01_value

    client = await client_for(live_server, http_session)
    await client.new_account()
    base = random_name()
    wildcard = f"*.{base}"
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": wildcard}]}
    )
    assert reply.json()["identifiers"] == [{"type": "dns", "value": wildcard}]
    authz = (await client.post(reply.json()["authorizations"][0])).json()
    assert authz["wildcard"] is True
    assert authz["identifier"] == {"type": "dns", "value": base}
    assert [c["type"] for c in authz["challenges"]] == ["dns-01"]
    challenge = authz["challenges"][0]
    (dns_records / f"_acme-challenge.{base}.txt").write_text(
        dns01_value(client, challenge["token"]) + "\n"
    )
    await client.post(challenge["url"], {})
    final = await wait_status(client, reply.json()["authorizations"][0], {"valid", "invalid"})
    assert final["status"] == "valid", final
