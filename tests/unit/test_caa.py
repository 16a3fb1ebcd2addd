"""The CAA decision of RFC 8659 §4 and RFC 8657, on record sets given directly."""

from __future__ import annotations

import pytest

from acme_mt.validation.caa import CaaRequest, decide, parse_issue_value

ME = "ca.me.test"
ACCOUNT = "https://acme.test/t/acme/acct/1"


def request(wildcard: bool = False, method: str = "http-01") -> CaaRequest:
    return CaaRequest("www.example.test", wildcard, (ME,), ACCOUNT, method)


def test_caa_empty_set_allows() -> None:
    assert decide(request(), []) is None


def test_caa_only_iodef_allows() -> None:
    assert decide(request(), [(0, "iodef", b"mailto:a@example.test")]) is None


def test_caa_semicolon_alone_forbids_everyone() -> None:
    assert decide(request(), [(0, "issue", b";")]) is not None


def test_caa_issuewild_governs_wildcards_only() -> None:
    records = [(0, "issue", ME.encode()), (0, "issuewild", b"other.test")]
    assert decide(request(), records) is None
    assert decide(request(wildcard=True), records) is not None


def test_caa_issue_applies_to_wildcards_without_issuewild() -> None:
    assert decide(request(wildcard=True), [(0, "issue", ME.encode())]) is None


def test_caa_unknown_critical_property_forbids() -> None:
    reason = decide(request(), [(128, "futuretag", b"x"), (0, "issue", ME.encode())])
    assert reason is not None and "futuretag" in reason


def test_caa_identity_compared_case_insensitively() -> None:
    assert decide(request(), [(0, "issue", b"CA.Me.Test")]) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ca.me.test", ("ca.me.test", {})),
        ("ca.me.test; accounturi=https://x/1", ("ca.me.test", {"accounturi": "https://x/1"})),
        (" ca.me.test ;validationmethods=dns-01 ", ("ca.me.test", {"validationmethods": "dns-01"})),
        ("ca.me.test; broken", None),
    ],
)
def test_caa_issue_value_parsing(value: str, expected: object) -> None:
    assert parse_issue_value(value) == expected
