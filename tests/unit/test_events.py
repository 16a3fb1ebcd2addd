"""Certificate events: heard here, passed on to the other workers, heard from them."""

from __future__ import annotations

from acme_mt.events import Events


def test_an_event_made_here_reaches_every_listener_and_the_relay() -> None:
    events = Events()
    heard: list[tuple[str, str, str]] = []
    events.on_revoked(lambda t, s: heard.append(("revoked", t, s)))
    events.on_issued(lambda t, s: heard.append(("issued", t, s)))
    events.on_issued(lambda t, s: heard.append(("issued-here", t, s)), local_only=True)
    events.relay = lambda kind, t, s: heard.append((f"relay {kind}", t, s))

    events.issued("t1", "0a")
    events.revoked("t2", "0b")

    assert heard == [
        ("issued", "t1", "0a"),
        ("issued-here", "t1", "0a"),
        ("relay issued", "t1", "0a"),
        ("revoked", "t2", "0b"),
        ("relay revoked", "t2", "0b"),
    ]


def test_an_event_from_another_worker_skips_local_listeners_and_is_not_relayed_back() -> None:
    events = Events()
    heard: list[tuple[str, str, str]] = []
    events.on_issued(lambda t, s: heard.append(("issued", t, s)))
    events.on_issued(lambda t, s: heard.append(("issued-here", t, s)), local_only=True)
    events.on_revoked(lambda t, s: heard.append(("revoked", t, s)))
    events.relay = lambda kind, t, s: heard.append((f"relay {kind}", t, s))

    events.deliver("issued", "t1", "0a")
    events.deliver("revoked", "t1", "0b")
    events.deliver("renamed", "t1", "0c")

    assert heard == [("issued", "t1", "0a"), ("revoked", "t1", "0b")]


def test_a_failing_listener_or_relay_stops_neither_the_others_nor_the_caller() -> None:
    events = Events()
    heard: list[str] = []

    def broken(tenant_id: str, serial: str) -> None:
        raise RuntimeError("listener bug")

    def broken_relay(kind: str, tenant_id: str, serial: str) -> None:
        raise OSError("supervisor gone")

    events.on_revoked(broken)
    events.on_revoked(lambda t, s: heard.append(s))
    events.relay = broken_relay

    events.revoked("t1", "0a")

    assert heard == ["0a"]
