"""The thread each SQLite file's writes run on: order, outcomes, cancellation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from acme_mt.storage.sqlite_db import _Worker


async def test_calls_run_in_order_on_one_other_thread() -> None:
    worker = _Worker("sqlite-test")
    seen: list[tuple[int, str]] = []

    def call(number: int) -> int:
        seen.append((number, threading.current_thread().name))
        return number * 2

    try:
        results = await asyncio.gather(*(worker.run(lambda n=n: call(n)) for n in range(20)))
    finally:
        worker.stop()

    assert results == [n * 2 for n in range(20)]
    assert [number for number, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"sqlite-test"}


async def test_an_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    worker = _Worker("sqlite-test")

    def broken() -> None:
        raise ValueError("no such table")

    try:
        with pytest.raises(ValueError, match="no such table"):
            await worker.run(broken)
        assert await worker.run(lambda: "still serving") == "still serving"
    finally:
        worker.stop()


async def test_a_call_cancelled_before_it_starts_is_skipped() -> None:
    worker = _Worker("sqlite-test")
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def blocking() -> None:
        started.set()
        release.wait(5)

    try:
        first = worker.run(blocking)
        await asyncio.to_thread(started.wait, 5)
        second = worker.run(lambda: ran.append("second"))
        second.cancel()
        release.set()
        await first
        await worker.run(lambda: ran.append("third"))
    finally:
        worker.stop()

    assert ran == ["third"]
