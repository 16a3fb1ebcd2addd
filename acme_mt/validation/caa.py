"""CAA checking (RFC 8659) with the account and method parameters of RFC 8657.

The relevant record set is the first non-empty one found climbing from the
name towards the root (§3). ``issuewild`` governs wildcard names when present,
``issue`` otherwise (§4.3). Issuance is allowed when the set has no issue
property of the kind that applies, or when one of those names one of this
tenant's identities and its ``accounturi`` and ``validationmethods``
parameters, if any, allow this account and this challenge type.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from acme_mt.errors import AcmeProblem
from acme_mt.validation.resolver import CaaRecord, Resolver

logger = logging.getLogger(__name__)

#: Property tags this checker understands; an unknown tag with the critical flag forbids issuance.
KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail", "issuevmc", "contactemail"})
CRITICAL_FLAG = 0x80


@dataclass(frozen=True)
class CaaRequest:
    """What one CAA decision depends on."""

    name: str
    wildcard: bool
    identities: tuple[str, ...]
    account_uri: str
    method: str


async def relevant_records(resolver: Resolver, name: str) -> tuple[str, list[CaaRecord]]:
    """The first non-empty CAA record set climbing from ``name`` (RFC 8659 §3)."""
    labels = name.rstrip(".").lower().split(".")
    for index in range(len(labels) - 1):
        candidate = ".".join(labels[index:])
        records = await resolver.resolve_caa(candidate)
        if records:
            return candidate, records
    return "", []


def parse_issue_value(value: str) -> tuple[str, dict[str, str]] | None:
    """Split an issue value into issuer domain and parameters; None when malformed (§4.2)."""
    domain, _, rest = value.partition(";")
    domain = domain.strip().lower()
    parameters: dict[str, str] = {}
    for part in rest.split(";"):
        part = part.strip()
        if not part:
            continue
        key, eq, val = part.partition("=")
        if not eq or not key.strip().isalnum():
            return None
        parameters[key.strip().lower()] = val.strip()
    return domain, parameters


def decide(request: CaaRequest, records: list[CaaRecord]) -> str | None:
    """None when the record set allows issuance, else why it does not."""
    for flags, tag, _value in records:
        if flags & CRITICAL_FLAG and tag.lower() not in KNOWN_TAGS:
            return f"a critical CAA property {tag!r} is not understood"
    tags = {tag.lower() for _f, tag, _v in records}
    kind = "issuewild" if request.wildcard and "issuewild" in tags else "issue"
    candidates = [value for _f, tag, value in records if tag.lower() == kind]
    if not candidates:
        return None
    identities = {identity.lower() for identity in request.identities}
    reasons: list[str] = []
    for raw in candidates:
        parsed = parse_issue_value(raw.decode("utf-8", "replace"))
        if parsed is None or parsed[0] not in identities:
            continue
        _domain, parameters = parsed
        uri = parameters.get("accounturi")
        if uri is not None and uri != request.account_uri:
            reasons.append("accounturi names another account")
            continue
        methods = parameters.get("validationmethods")
        if methods is not None and request.method not in {m.strip() for m in methods.split(",")}:
            reasons.append(f"validationmethods does not allow {request.method}")
            continue
        return None
    if reasons:
        return "; ".join(reasons)
    return f"CAA {kind} records do not name {', '.join(sorted(identities))}"


async def check_caa(resolver: Resolver, request: CaaRequest) -> None:
    """Raise a ``caa`` problem when CAA forbids this tenant to issue for the name.

    :raises AcmeProblem: caa, or dns when the look-up fails (§3: failure stops issuance).
    """
    where, records = await relevant_records(resolver, request.name)
    reason = decide(request, records)
    if reason is not None:
        logger.info("CAA at %s forbids %s: %s", where, request.name, reason)
        raise AcmeProblem("caa", f"CAA for {request.name} at {where}: {reason}")
