"""A tenant's OCSP responder over a real SQLite store and file key store: pre-signing,
refresh, revocation, the token bucket, issuer matching and the delegated signer."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from acme_mt.app import Services, open_services
from acme_mt.config import ServerSettings, Settings
from acme_mt.errors import KeyStoreError
from acme_mt.issuance import new_serial
from acme_mt.models import CertificateRecord, CertificateStatus
from acme_mt.storage.base import OcspResponseRecord
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.lifecycle import onboard_tenant
from ocsp.cache import CachedResponse
from ocsp.limits import TokenBucket
from ocsp.request import OcspQuery, TryLater, Unauthorized, parse_request
from ocsp.responder import PULL_OVERLAP, REFRESH_AFTER, TenantResponder
from ocsp.signers import RENEW_BEFORE, SignerKeeper

START = datetime.now(UTC).replace(microsecond=0)


class Clock:
    """A settable clock for the responder's notion of now."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    settings = Settings(server=ServerSettings(data_dir=str(tmp_path)))
    opened = await open_services(settings)
    yield opened
    await opened.close()


@pytest.fixture
async def tenant(services: Services) -> TenantContext:
    context = await services.tenants.resolve("default")
    assert context is not None
    return context


async def issue(
    tenant: TenantContext, *, not_after: datetime | None = None, revoked: bool = False
) -> x509.Certificate:
    """Record, sign and store a leaf the way the authority does, without ACME."""
    serial = new_serial()
    not_before = START - timedelta(hours=1)
    not_after = not_after or START + timedelta(days=30)
    record = CertificateRecord(
        serial=format(serial, "x"),
        account_id=None,
        order_id=None,
        status=CertificateStatus.PENDING,
        not_before=not_before,
        not_after=not_after,
        created=START,
        channel="est",
    )
    await tenant.store.insert_certificate(record)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate = await tenant.issuer.issue_leaf(
        csr, [("dns", "a.test")], not_before, not_after, serial, 0, True
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    await tenant.store.complete_issuance(None, replace(record, der=der, status="valid"))
    if revoked:
        await tenant.store.revoke_certificate(record.serial, 1, START)
    return certificate


def query_for(
    tenant: TenantContext, serial: int, algorithm: hashes.HashAlgorithm | None = None
) -> tuple[OcspQuery, bytes]:
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        *_hashes(tenant, algorithm or hashes.SHA1()), serial, algorithm or hashes.SHA1()
    )
    der = builder.build().public_bytes(serialization.Encoding.DER)
    return parse_request(der), der


def _hashes(tenant: TenantContext, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """The tenant CA's issuerNameHash and issuerKeyHash, as a client computes them."""
    ca = tenant.issuer.certificate
    name = ca.subject.public_bytes()
    key = ca.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return hashlib.new(algorithm.name, name).digest(), hashlib.new(algorithm.name, key).digest()


def status_of(answer: CachedResponse | bytes) -> ocsp.OCSPCertStatus:
    der = answer.der if isinstance(answer, CachedResponse) else answer
    return ocsp.load_der_ocsp_response(der).certificate_status


async def settle(responder: TenantResponder) -> None:
    """Wait for the tasks certificate events started."""
    while responder._tasks:
        await asyncio.gather(*responder._tasks)


async def test_warm_presigns_issued_certificates_and_skips_expired_ones(
    tenant: TenantContext,
) -> None:
    good = await issue(tenant)
    revoked = await issue(tenant, revoked=True)
    expired = await issue(tenant, not_after=START - timedelta(minutes=1))
    responder = TenantResponder(tenant, clock=Clock())

    assert await responder.warm() == 2
    assert responder.warmed and len(responder.cache) == 2
    first = await responder.answer(*query_for(tenant, good.serial_number), nonce_allowed=True)
    again = await responder.answer(*query_for(tenant, good.serial_number), nonce_allowed=True)
    assert isinstance(first, CachedResponse) and first is again
    assert status_of(first) == ocsp.OCSPCertStatus.GOOD
    answer = await responder.answer(*query_for(tenant, revoked.serial_number), nonce_allowed=True)
    assert status_of(answer) == ocsp.OCSPCertStatus.REVOKED

    # Still good (its status is in the store), signed on demand and then cached.
    late = await responder.answer(*query_for(tenant, expired.serial_number), nonce_allowed=True)
    assert isinstance(late, CachedResponse)
    assert len(responder.cache) == 3


async def test_repeated_request_bytes_are_answered_without_parsing(
    tenant: TenantContext,
) -> None:
    leaf = await issue(tenant)
    responder = TenantResponder(tenant, clock=Clock())
    await responder.warm()
    query, der = query_for(tenant, leaf.serial_number)
    assert responder.cache.for_request(der) is None
    answer = await responder.answer(query, der, nonce_allowed=True)
    assert responder.cache.for_request(der) is answer


async def test_unknown_serial_is_signed_live_never_cached_and_rate_limited(
    tenant: TenantContext,
) -> None:
    responder = TenantResponder(tenant, clock=Clock(), bucket=TokenBucket(rate=1e-6, burst=2))
    await responder.warm()
    for serial in (101, 102):
        answer = await responder.answer(*query_for(tenant, serial), nonce_allowed=True)
        assert isinstance(answer, bytes)
        assert status_of(answer) == ocsp.OCSPCertStatus.UNKNOWN
    assert len(responder.cache) == 0
    with pytest.raises(TryLater):
        await responder.answer(*query_for(tenant, 103), nonce_allowed=True)


async def test_issued_serial_asked_with_another_hash_costs_no_token(
    tenant: TenantContext,
) -> None:
    leaves = [await issue(tenant) for _ in range(3)]
    responder = TenantResponder(tenant, clock=Clock(), bucket=TokenBucket(rate=1e-6, burst=1))
    await responder.warm()
    for leaf in leaves:
        query = query_for(tenant, leaf.serial_number, hashes.SHA256())
        answer = await responder.answer(*query, nonce_allowed=True)
        assert isinstance(answer, CachedResponse)
        assert ocsp.load_der_ocsp_response(answer.der).hash_algorithm.name == "sha256"
    await responder.answer(*query_for(tenant, 999), nonce_allowed=True)
    with pytest.raises(TryLater):
        await responder.answer(*query_for(tenant, 998), nonce_allowed=True)


async def test_nonce_forces_a_live_response_only_when_allowed(tenant: TenantContext) -> None:
    leaf = await issue(tenant)
    responder = TenantResponder(tenant, clock=Clock())
    await responder.warm()
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(*_hashes(tenant, hashes.SHA1()), leaf.serial_number, hashes.SHA1())
        .add_extension(x509.OCSPNonce(b"\x07" * 16), critical=False)
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    live = await responder.answer(parse_request(request), request, nonce_allowed=True)
    assert isinstance(live, bytes)
    nonce = ocsp.load_der_ocsp_response(live).extensions.get_extension_for_class(x509.OCSPNonce)
    assert nonce.value.nonce == b"\x07" * 16
    cached = await responder.answer(parse_request(request), request, nonce_allowed=False)
    assert isinstance(cached, CachedResponse)
    assert responder.cache.for_request(request) is None


async def test_another_issuers_cert_id_is_unauthorized(
    services: Services, tenant: TenantContext
) -> None:
    await onboard_tenant(
        services.settings,
        services.registry,
        services.stores,
        services.keystore,
        services.provider,
        "other",
        {"require_eab": False},
    )
    other = await services.tenants.resolve("other")
    assert other is not None
    leaf = await issue(other)
    responder = TenantResponder(tenant, clock=Clock())
    with pytest.raises(Unauthorized):
        await responder.answer(*query_for(other, leaf.serial_number), nonce_allowed=True)


async def test_revocation_resigns_every_cached_variant(tenant: TenantContext) -> None:
    leaf = await issue(tenant)
    serial_hex = format(leaf.serial_number, "x")
    responder = TenantResponder(tenant, clock=Clock())
    await responder.warm()
    await responder.answer(
        *query_for(tenant, leaf.serial_number, hashes.SHA256()), nonce_allowed=True
    )
    assert len(responder.cache.keys_of(leaf.serial_number)) == 2

    await tenant.store.revoke_certificate(serial_hex, 4, START)
    responder.revoked(serial_hex)
    await settle(responder)
    for key in responder.cache.keys_of(leaf.serial_number):
        cached = responder.cache.get(key)
        assert cached is not None
        response = ocsp.load_der_ocsp_response(cached.der)
        assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert response.revocation_reason == x509.ReasonFlags.superseded


async def test_issued_events_are_presigned_together_and_kept_in_one_write(
    tenant: TenantContext,
) -> None:
    responder = TenantResponder(tenant, clock=Clock())
    await responder.warm()
    leaves = [await issue(tenant) for _ in range(3)]
    saved: list[int] = []
    save = tenant.store.save_ocsp_responses

    async def counted(records: Sequence[OcspResponseRecord]) -> None:
        saved.append(len(records))
        await save(records)

    tenant.store.save_ocsp_responses = counted  # type: ignore[method-assign]
    for leaf in leaves:
        responder.issued(format(leaf.serial_number, "x"))
    await settle(responder)

    assert len(responder.cache) == 3
    assert saved == [3]
    for leaf in leaves:
        assert await tenant.store.get_ocsp_response(format(leaf.serial_number, "x")) is not None


async def test_refresh_resigns_after_half_the_window_and_drops_expired(
    tenant: TenantContext,
) -> None:
    lasting = await issue(tenant)
    short = await issue(tenant, not_after=START + timedelta(hours=6))
    clock = Clock()
    responder = TenantResponder(tenant, clock=clock)
    await responder.warm()
    before = await responder.answer(*query_for(tenant, lasting.serial_number), nonce_allowed=True)
    assert isinstance(before, CachedResponse)

    clock.now = START + REFRESH_AFTER - timedelta(minutes=1)
    assert await responder.refresh() == 0
    clock.now = START + REFRESH_AFTER + timedelta(minutes=1)
    assert await responder.refresh() == 1
    after = await responder.answer(*query_for(tenant, lasting.serial_number), nonce_allowed=True)
    assert isinstance(after, CachedResponse)
    assert after.this_update == clock.now and after.der != before.der
    assert ocsp.load_der_ocsp_response(after.der).this_update_utc == clock.now
    assert responder.cache.keys_of(short.serial_number) == set()


async def test_signer_is_reused_after_a_restart_and_renewed_before_it_ends(
    tenant: TenantContext,
) -> None:
    first = await SignerKeeper(tenant).current(START)
    reloaded = await SignerKeeper(tenant).current(START + timedelta(days=1))
    assert reloaded.key_label == first.key_label
    assert reloaded.certificate == first.certificate

    renewal_time = first.not_after - RENEW_BEFORE + timedelta(minutes=1)
    renewed = await SignerKeeper(tenant).current(renewal_time)
    assert renewed.key_label != first.key_label
    assert renewed.not_after > first.not_after
    with pytest.raises(KeyStoreError):
        await tenant.keys.get(first.key_label)
    saved = await tenant.store.get_ocsp_signer()
    assert saved is not None and saved.key_label == renewed.key_label
    events = [entry.event for entry in await tenant.store.list_audit()]
    assert events.count("ocsp.signer.issued") == 2
    assert events.count("ocsp.signer.requested") == 2


async def test_a_replica_takes_the_signer_another_one_renewed(tenant: TenantContext) -> None:
    holder, other = SignerKeeper(tenant), SignerKeeper(tenant)
    first = await holder.current(START)
    assert (await other.current(START)).key_label == first.key_label

    renewal_time = first.not_after - RENEW_BEFORE + timedelta(minutes=1)
    renewed = await holder.current(renewal_time)
    taken = await other.current(renewal_time)

    assert renewed.key_label != first.key_label
    assert taken.key_label == renewed.key_label
    events = [entry.event for entry in await tenant.store.list_audit()]
    assert events.count("ocsp.signer.issued") == 2


async def test_responses_never_outlive_their_signer(tenant: TenantContext) -> None:
    leaf = await issue(tenant)
    clock = Clock()
    responder = TenantResponder(tenant, clock=clock)
    await responder.warm()
    signer = await responder.signers.current(clock())
    clock.now = signer.not_after - RENEW_BEFORE - timedelta(minutes=1)
    assert await responder.refresh() == 1
    cached = await responder.answer(*query_for(tenant, leaf.serial_number), nonce_allowed=True)
    assert isinstance(cached, CachedResponse)
    assert cached.next_update <= signer.not_after


async def test_list_certificates_pages_issued_ones_only(tenant: TenantContext) -> None:
    issued = {format((await issue(tenant)).serial_number, "x") for _ in range(5)}
    pending = CertificateRecord(
        serial=format(new_serial(), "x"),
        account_id=None,
        order_id=None,
        status=CertificateStatus.PENDING,
        not_before=START,
        not_after=START + timedelta(days=1),
        created=START,
        channel="est",
    )
    await tenant.store.insert_certificate(pending)
    seen: list[str] = []
    after = ""
    while page := await tenant.store.list_certificates(after, 2):
        assert len(page) <= 2 and all(record.der is None for record in page)
        seen += [record.serial for record in page]
        after = page[-1].serial
    assert seen == sorted(issued)


async def test_status_read_before_a_revocation_never_replaces_the_revoked_response(
    tenant: TenantContext,
) -> None:
    leaf = await issue(tenant)
    serial_hex = format(leaf.serial_number, "x")
    responder = TenantResponder(tenant, clock=Clock())
    read_in = responder._generation
    stale = await tenant.store.get_certificate(serial_hex)
    assert stale is not None and stale.status == CertificateStatus.VALID

    await tenant.store.revoke_certificate(serial_hex, 1, START)
    responder.revoked(serial_hex)
    await settle(responder)
    cert = responder.presign_request(leaf.serial_number)
    await responder._sign_and_keep([(cert, stale)], read_in)  # a slow pre-signing pass
    cached = responder.cache.get(cert.cache_key)
    assert cached is not None
    status = ocsp.load_der_ocsp_response(cached.der).certificate_status
    assert status == ocsp.OCSPCertStatus.REVOKED


async def test_catch_up_resigns_revocations_made_by_another_process(
    tenant: TenantContext,
) -> None:
    leaf = await issue(tenant)
    kept = await issue(tenant)
    responder = TenantResponder(tenant, clock=Clock())
    await responder.warm()
    assert await responder.catch_up() == 0

    # Revoked in the store only: no event reaches this process.
    await tenant.store.revoke_certificate(format(leaf.serial_number, "x"), 1, START)
    assert await responder.catch_up() == 1
    assert await responder.catch_up() == 0
    revoked = await responder.answer(*query_for(tenant, leaf.serial_number), nonce_allowed=True)
    assert status_of(revoked) == ocsp.OCSPCertStatus.REVOKED
    good = await responder.answer(*query_for(tenant, kept.serial_number), nonce_allowed=True)
    assert status_of(good) == ocsp.OCSPCertStatus.GOOD


async def test_pull_rereads_recent_responses_only_while_the_store_is_busy(
    tenant: TenantContext,
) -> None:
    first = await issue(tenant)
    await TenantResponder(tenant, clock=Clock()).warm()  # another process signs and stores
    await asyncio.sleep(0.01)
    second = await issue(tenant)
    await TenantResponder(tenant, clock=Clock()).warm()  # and a third one, later
    reader = TenantResponder(tenant, clock=Clock())
    read: list[int] = []
    listing = tenant.store.list_ocsp_responses

    async def counted(stored_since: datetime, limit: int) -> list[OcspResponseRecord]:
        found = await listing(stored_since, limit)
        read.append(len(found))
        return found

    tenant.store.list_ocsp_responses = counted  # type: ignore[method-assign]
    assert await reader.pull() == 2
    assert await reader.pull() == 0  # within the overlap: both read again, neither new
    reader._moved_at -= PULL_OVERLAP.total_seconds()
    assert await reader.pull() == 0  # quiet store: only what is as new as the newest
    assert read == [2, 2, 1]
    for leaf in (first, second):
        assert reader.cache.get(reader.presign_request(leaf.serial_number).cache_key) is not None


async def test_warm_signs_again_what_the_store_kept_too_long(tenant: TenantContext) -> None:
    leaf = await issue(tenant)
    await TenantResponder(tenant, clock=Clock()).warm()
    clock = Clock()
    clock.now = START + REFRESH_AFTER + timedelta(hours=1)  # back after a long stop

    restarted = TenantResponder(tenant, clock=clock)
    assert await restarted.warm() == 1
    cached = restarted.cache.get(restarted.presign_request(leaf.serial_number).cache_key)
    assert cached is not None and cached.this_update == clock.now
