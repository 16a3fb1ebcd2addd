"""dns-01 validation (RFC 8555 §8.4): a TXT record at ``_acme-challenge.<name>``.

The record must hold base64url(SHA-256(key authorization)). Several TXT
values may sit at the name (one per pending authorization), and any one of
them may match. For a wildcard the caller passes the base name (RFC 8555
§7.1.3). IP identifiers cannot use dns-01 (RFC 8738 §7).

Outcomes: the name does not exist or the look-up fails → ``dns``; no TXT
value at all → ``unauthorized``; only other values → ``incorrectResponse``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import josepy

from acme_mt.errors import AcmeProblem
from acme_mt.models import Identifier
from acme_mt.validation.resolver import Deadline, Resolver

logger = logging.getLogger(__name__)

CHALLENGE_LABEL = "_acme-challenge"

#: How many of the values found a problem detail quotes.
QUOTED_VALUES = 5


def txt_record_value(key_authorization: str) -> str:
    """The TXT value a client publishes: base64url(SHA-256(key authorization))."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return josepy.b64.b64encode(digest).decode("ascii")


def record_name(identifier: Identifier) -> str:
    """The name that carries the TXT record for a DNS identifier."""
    return f"{CHALLENGE_LABEL}.{identifier.value.rstrip('.')}"


def check_txt_values(name: str, values: Sequence[str], key_authorization: str) -> None:
    """Accept when one of ``values`` is the expected digest.

    :raises AcmeProblem: ``unauthorized`` with no values, ``incorrectResponse``
        with only wrong ones (quoting a few of them).
    """
    if txt_record_value(key_authorization) in values:
        return
    if not values:
        raise AcmeProblem("unauthorized", f"DNS has no TXT record at {name}")

    quoted = ", ".join(repr(value[:100]) for value in values[:QUOTED_VALUES])
    if len(values) > QUOTED_VALUES:
        quoted += f" and {len(values) - QUOTED_VALUES} more"
    detail = (
        f"the TXT records at {name} hold {quoted}, none of them "
        "the digest of the key authorization of this challenge"
    )
    raise AcmeProblem("incorrectResponse", detail)


async def validate_dns01(
    resolver: Resolver,
    identifier: Identifier,
    key_authorization: str,
    deadline: Deadline,
) -> None:
    """Look up the challenge TXT records; one must hold the expected digest.

    :raises AcmeProblem: as the module docstring lists, or ``unauthorized``
        for an IP identifier.
    """
    if identifier.type != "dns":
        detail = (
            f"dns-01 cannot validate the {identifier.type} identifier "
            f"{identifier.value} (RFC 8738 §7)"
        )
        raise AcmeProblem("unauthorized", detail)

    name = record_name(identifier)
    values = await resolver.resolve_txt(name, deadline.remaining())
    logger.debug("dns-01: %d TXT value(s) at %s", len(values), name)
    check_txt_values(name, values, key_authorization)
