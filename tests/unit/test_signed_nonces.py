"""Signed nonces, which the worker processes of one embedded server share."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path

import pytest

from acme_mt.errors import TenantUnavailable
from acme_mt.storage.sqlite import SqliteBackend
from acme_mt.storage.sqlite_nonces import SqliteSpentNonces
from acme_mt.tenancy.nonces import SignedNonces

KEY = bytes(range(32))


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def worker(
    path: Path, tenant_id: str = "t1", key: bytes = KEY, clock: Clock | None = None
) -> SignedNonces:
    """One worker's view: its own connection to the shared spent file."""
    return SignedNonces(key, tenant_id, SqliteSpentNonces(path), clock=clock or Clock())


async def test_a_nonce_redeems_once_and_in_any_worker(tmp_path: Path) -> None:
    spent = tmp_path / "spent.sqlite"
    first, second = worker(spent), worker(spent)

    nonce = await first.issue()

    assert await second.redeem(nonce)
    assert not await first.redeem(nonce)
    assert not await second.redeem(nonce)


async def test_nonces_are_distinct_and_url_safe(tmp_path: Path) -> None:
    service = worker(tmp_path / "spent.sqlite")

    nonces = {await service.issue() for _ in range(2000)}

    assert len(nonces) == 2000
    assert all(len(n) == 40 and "=" not in n and "+" not in n and "/" not in n for n in nonces)


async def test_another_tenants_nonce_is_refused_and_stays_usable_there(tmp_path: Path) -> None:
    alpha = worker(tmp_path / "a.sqlite", "tenant-a")
    beta = worker(tmp_path / "b.sqlite", "tenant-b")

    nonce = await alpha.issue()

    assert not await beta.redeem(nonce)
    assert await alpha.redeem(nonce)


async def test_a_nonce_signed_under_another_key_is_refused(tmp_path: Path) -> None:
    ours = worker(tmp_path / "spent.sqlite")
    other_server = worker(tmp_path / "other.sqlite", key=bytes(32))

    assert not await ours.redeem(await other_server.issue())


async def test_a_tampered_nonce_is_refused(tmp_path: Path) -> None:
    service = worker(tmp_path / "spent.sqlite")
    raw = bytearray(base64.urlsafe_b64decode(await service.issue() + "=="))
    raw[7] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()

    assert not await service.redeem(tampered)


@pytest.mark.parametrize("nonce", ["", "abc", "A" * 39, "A" * 41, "!" * 40, "A" * 40])
async def test_malformed_nonces_are_refused(tmp_path: Path, nonce: str) -> None:
    assert not await worker(tmp_path / "spent.sqlite").redeem(nonce)


async def test_an_old_nonce_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    service = worker(tmp_path / "spent.sqlite", clock=clock)
    nonce = await service.issue()

    clock.now += 901

    assert not await service.redeem(nonce)


async def test_a_nonce_from_the_future_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    service = worker(tmp_path / "spent.sqlite", clock=clock)
    clock.now += 60
    nonce = await service.issue()

    clock.now -= 60

    assert not await service.redeem(nonce)


async def test_a_clock_slack_admits_a_maker_a_little_ahead_and_no_more(tmp_path: Path) -> None:
    clock = Clock()
    spent = SqliteSpentNonces(tmp_path / "spent.sqlite")
    service = SignedNonces(KEY, "t1", spent, clock=clock, clock_slack=30)
    clock.now += 20
    ahead = await service.issue()
    clock.now += 20
    too_far = await service.issue()

    clock.now -= 40

    assert await service.redeem(ahead)
    assert not await service.redeem(too_far)


async def test_a_claim_checks_a_nonce_without_spending_it(tmp_path: Path) -> None:
    clock = Clock()
    service = worker(tmp_path / "spent.sqlite", clock=clock)
    nonce = await service.issue()

    claim = service.claim(nonce)
    at_other_tenant = worker(tmp_path / "other.sqlite", "t2", clock=clock).claim(nonce)
    tampered = service.claim(nonce[:-1] + ("A" if nonce[-1] != "A" else "B"))

    assert claim is not None and claim[1] == int(clock.now) + 900
    assert (at_other_tenant, tampered) == (None, None)
    assert await service.redeem(nonce)
    assert service.claim(nonce) == claim  # the spent set, not the claim, makes it single-use
    assert not await service.redeem(nonce)


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SignedNonces(b"short", "t1", SqliteSpentNonces(tmp_path / "spent.sqlite"))


async def test_an_unwritable_spent_set_makes_the_tenant_unavailable(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    service = worker(blocked / "spent.sqlite")

    with pytest.raises(TenantUnavailable):
        await service.redeem(await service.issue())


async def test_the_backend_keeps_one_spent_file_per_tenant(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)

    assert backend.spent_nonces("tenant1") is backend.spent_nonces("tenant1")
    assert backend.spent_nonces("tenant1") is not backend.spent_nonces("tenant2")
    assert await backend.spent_nonces("tenant1").spend(b"x" * 15, 2_000_000_000)
    assert await backend.spent_nonces("tenant2").spend(b"x" * 15, 2_000_000_000)

    assert sorted(p.name for p in (tmp_path / "nonces").iterdir() if p.suffix == ".sqlite") == [
        "tenant1.sqlite",
        "tenant2.sqlite",
    ]
    for bad in ("../escape", "a/b", "", "x" * 65):
        with pytest.raises(Exception, match="invalid tenant id"):
            backend.spent_nonces(bad)


async def test_a_redemption_waits_out_another_processs_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "spent.sqlite"
    service = worker(path)
    nonce = await service.issue()
    await service.redeem(await service.issue())  # makes the file
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker in the middle of its write

    redeeming = asyncio.ensure_future(service.redeem(nonce))
    await asyncio.sleep(0.05)
    waited = not redeeming.done()
    other.execute("COMMIT")

    assert waited and await redeeming
    other.close()
