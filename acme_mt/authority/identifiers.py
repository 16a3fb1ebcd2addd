"""Identifier checks for newOrder and newAuthz (RFC 8555 §7.1.4, §7.4; RFC 8738).

Identifiers are echoed to the client exactly as sent (clients compare them);
comparisons use the lower-cased form.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from acme_mt.errors import AcmeProblem, Subproblem
from acme_mt.models import Identifier
from acme_mt.tenancy.policy import TenantPolicy
from acme_mt.tenancy.profiles import Profile

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MAX_NAME_LENGTH = 253


def parse_identifier(raw: Any) -> Identifier:
    """Turn a JSON identifier into an ``Identifier``, or a malformed problem."""
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise AcmeProblem("malformed", "An identifier must be an object with type and value")
    value = raw.get("value")
    if not isinstance(value, str) or not value:
        raise AcmeProblem("malformed", "An identifier needs a non-empty string value")
    return Identifier(raw["type"], value)


def dns_name_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable DNS identifier, or None when it is."""
    name = value.lower()
    if len(name) > MAX_NAME_LENGTH:
        return "the name is longer than 253 characters"
    try:
        ipaddress.ip_address(name.strip("[]"))
        return "an IP address is not a dns identifier"
    except ValueError:
        pass
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return "a wildcard needs at least two labels below it"
    if "*" in name[1:]:
        return "a wildcard is allowed only as the whole leftmost label"
    if len(labels) < 2:
        return "the name needs at least two labels"
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "the name has an invalid label"
    if labels[-1].isdigit():
        return "the top-level label cannot be numeric"
    return None


def check_identifiers(
    raw_identifiers: Any,
    policy: TenantPolicy,
    profile: Profile,
    *,
    allow_wildcard: bool = True,
) -> tuple[Identifier, ...]:
    """Validate a newOrder identifier list against syntax and the tenant's policy.

    Duplicates (compared case-insensitively) are dropped, as RFC 8555 allows;
    each rejected identifier becomes a subproblem.

    :raises AcmeProblem: malformed, unsupportedIdentifier or rejectedIdentifier.
    """
    if not isinstance(raw_identifiers, list) or not raw_identifiers:
        raise AcmeProblem("malformed", "identifiers must be a non-empty list")
    if len(raw_identifiers) > profile.max_identifiers:
        raise AcmeProblem(
            "rejectedIdentifier",
            f"profile {profile.name} max_identifiers allows at most "
            f"{profile.max_identifiers} identifiers",
        )
    identifiers: list[Identifier] = []
    seen: set[tuple[str, str]] = set()
    subproblems: list[Subproblem] = []
    for raw in raw_identifiers:
        identifier = parse_identifier(raw)
        key = comparable(identifier)
        if key in seen:
            continue
        seen.add(key)
        identifiers.append(identifier)
        reason = identifier_problem(identifier, policy, profile, allow_wildcard=allow_wildcard)
        if reason is not None:
            kind, detail = reason
            subproblems.append(Subproblem(kind, detail, identifier.to_json()))
    if len(subproblems) == 1:
        only = subproblems[0]
        raise AcmeProblem(only.type, f"{identifiers_text([only])}: {only.detail}", (only,))
    if subproblems:
        raise AcmeProblem(
            "rejectedIdentifier",
            f"{len(subproblems)} identifiers were rejected",
            tuple(subproblems),
        )
    return tuple(identifiers)


def identifier_problem(
    identifier: Identifier, policy: TenantPolicy, profile: Profile, *, allow_wildcard: bool = True
) -> tuple[str, str] | None:
    """The (problem type, detail) that rejects one identifier, or None."""
    if identifier.type == "ip":
        return ip_problem(identifier.value, profile)
    if identifier.type != "dns":
        return "unsupportedIdentifier", f"identifier type {identifier.type!r} is not supported"
    reason = dns_name_problem(identifier.value)
    if reason is not None:
        return "rejectedIdentifier", reason
    if identifier.value.startswith("*.") and not allow_wildcard:
        return "rejectedIdentifier", "a wildcard cannot be pre-authorized"
    if not policy.allows_name(identifier.value):
        allowed = ", ".join(policy.allowed_suffixes)
        return "rejectedIdentifier", f"policy allowed_suffixes permits only names under {allowed}"
    return None


def ip_problem(value: str, profile: Profile) -> tuple[str, str] | None:
    """RFC 8738 §3: an ip identifier is a textual address, allowed only by some profiles."""
    if not profile.allow_ip:
        return "rejectedIdentifier", f"profile {profile.name} does not allow ip identifiers"
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return "malformed", "the value is not an IP address"
    if not address.is_global and not (address.is_loopback or address.is_private):
        return "rejectedIdentifier", "the address is not usable for a certificate"
    return None


def comparable(identifier: Identifier) -> tuple[str, str]:
    """The form identifiers are compared in: lower-cased names, canonical addresses."""
    if identifier.type == "ip":
        try:
            return "ip", str(ipaddress.ip_address(identifier.value))
        except ValueError:
            return "ip", identifier.value
    return identifier.type, identifier.value.lower()


def identifiers_text(subproblems: list[Subproblem]) -> str:
    return ", ".join(s.identifier["value"] for s in subproblems if s.identifier)


def base_identifier(identifier: Identifier) -> tuple[Identifier, bool]:
    """The identifier an authorization covers (wildcard label removed) and whether it was one."""
    if identifier.type == "dns" and identifier.value.startswith("*."):
        return Identifier("dns", identifier.value[2:]), True
    return identifier, False
