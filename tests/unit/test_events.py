"""Certificate events: heard here, passed on to the other workers, heard from them."""

from __future__ import annotations

from acme_mt.events import Events


def recording() -> tuple[Events, list[tuple[str, str, str]]]:
    events = Events()
    heard: list[tuple[str, str, str]] = []
    events.on_revoked(lambda t, s: heard.append(("revoked", t, s)))
    events.on_issued(lambda t, s: heard.append(("issued", t, s)))
    events.on_issuing(lambda t, s: heard.append(("issuing", t, s)))
    events.relay = lambda kind, t, s: heard.append((f"relay {kind}", t, s))
    return events, heard


def test_a_revocation_made_here_reaches_every_listener_and_the_relay() -> None:
    events, heard = recording()

    events.revoked("t2", "0b")

    assert heard == [("revoked", "t2", "0b"), ("relay revoked", "t2", "0b")]


def test_only_the_first_issuance_of_a_tenant_is_passed_on() -> None:
    events, heard = recording()

    events.issued("t1", "0a")
    events.issued("t1", "0c")
    events.issued("t2", "0d")

    assert heard == [
        ("issued", "t1", "0a"),
        ("issuing", "t1", "0a"),
        ("relay issuing", "t1", "0a"),
        ("issued", "t1", "0c"),
        ("issued", "t2", "0d"),
        ("issuing", "t2", "0d"),
        ("relay issuing", "t2", "0d"),
    ]


def test_an_event_from_another_worker_is_heard_but_not_relayed_back() -> None:
    events, heard = recording()

    events.deliver("issuing", "t1", "0a")
    events.deliver("revoked", "t1", "0b")
    events.deliver("issued", "t1", "0c")
    events.deliver("renamed", "t1", "0d")

    assert heard == [("issuing", "t1", "0a"), ("revoked", "t1", "0b")]


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
