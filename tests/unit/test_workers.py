"""The supervisor's side of several worker processes, short of starting them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import pytest

from acme_mt.config import ServerSettings, Settings
from acme_mt.errors import AcmeMtError
from acme_mt.events import Events
from acme_mt.workers import (
    LINK_FD_VARIABLE,
    WorkerLink,
    link_fd_from_environment,
    listen,
    worker_count,
)


def settings_with(workers: int) -> Settings:
    return Settings(server=ServerSettings(workers=workers))


def test_zero_workers_means_one_per_usable_cpu_and_at_most_eight() -> None:
    usable = len(os.sched_getaffinity(0))

    assert worker_count(settings_with(0)) == max(1, min(usable, 8))
    assert worker_count(settings_with(3)) == 3
    with pytest.raises(AcmeMtError):
        worker_count(settings_with(-1))


def test_the_link_variable_is_read_once_and_must_be_a_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LINK_FD_VARIABLE, "7")
    assert link_fd_from_environment() == 7
    assert link_fd_from_environment() is None

    monkeypatch.setenv(LINK_FD_VARIABLE, "seven")
    with pytest.raises(AcmeMtError):
        link_fd_from_environment()


async def test_a_worker_reads_the_key_passes_events_both_ways_and_stops_with_its_supervisor() -> (
    None
):
    supervisor_end, worker_end = socket.socketpair()
    key = os.urandom(32)
    first = {"nonce_key": base64.urlsafe_b64encode(key).decode(), "listeners": {"https": 7}}
    supervisor_end.sendall(json.dumps(first).encode() + b"\n")
    link = await WorkerLink.connect(worker_end.detach())
    assert (link.nonce_key, link.listeners) == (key, {"https": 7})

    link.ready()
    link.relay("revoked", "t1", "0a")
    reader, writer = await asyncio.open_unix_connection(sock=supervisor_end)
    assert json.loads(await reader.readline()) == {"ready": True}
    assert json.loads(await reader.readline()) == {
        "event": "revoked",
        "tenant": "t1",
        "serial": "0a",
    }

    events = Events()
    heard: list[tuple[str, str]] = []
    events.on_revoked(lambda t, s: heard.append((t, s)))
    stop = asyncio.Event()
    listening = asyncio.create_task(link.listen(events, stop))
    writer.write(
        b"not json\n"
        + json.dumps({"event": "revoked", "tenant": "t2", "serial": "0b"}).encode()
        + b"\n"
    )
    await writer.drain()
    writer.close()
    await asyncio.wait_for(listening, 5)

    assert heard == [("t2", "0b")]
    assert stop.is_set()
    link.close()


@pytest.mark.parametrize(
    "first",
    [
        b'{"nonce_key": "c2hvcnQ", "listeners": {}}',
        b'{"nonce_key": "' + base64.urlsafe_b64encode(bytes(32)) + b'"}',
        b'{"nonce_key": "' + base64.urlsafe_b64encode(bytes(32)) + b'", "listeners": {"a": "3"}}',
        b"not json",
    ],
)
async def test_a_worker_without_a_nonce_key_or_listeners_refuses_to_start(first: bytes) -> None:
    supervisor_end, worker_end = socket.socketpair()
    supervisor_end.sendall(first + b"\n")

    with pytest.raises(AcmeMtError):
        await WorkerLink.connect(worker_end.detach())
    supervisor_end.close()


def test_a_taken_address_is_refused_with_its_reason() -> None:
    first = listen("127.0.0.1:0", 8443)
    try:
        taken = f"127.0.0.1:{first.getsockname()[1]}"
        with pytest.raises(AcmeMtError, match=f"cannot listen on {taken}"):
            listen(taken, 8443)
    finally:
        first.close()


async def test_a_worker_waits_for_the_word_to_serve_and_hears_events_meanwhile() -> None:
    supervisor_end, worker_end = socket.socketpair()
    first = {"nonce_key": base64.urlsafe_b64encode(bytes(32)).decode(), "listeners": {}}
    supervisor_end.sendall(
        json.dumps(first).encode()
        + b"\n"
        + json.dumps({"event": "revoked", "tenant": "t1", "serial": "0a"}).encode()
        + b'\n{"serve": true}\n'
    )
    link = await WorkerLink.connect(worker_end.detach())
    events = Events()
    heard: list[tuple[str, str]] = []
    events.on_revoked(lambda t, s: heard.append((t, s)))

    assert await asyncio.wait_for(link.wait_to_serve(events), 5)
    assert heard == [("t1", "0a")]

    supervisor_end.close()
    assert not await asyncio.wait_for(link.wait_to_serve(events), 5)
    link.close()
