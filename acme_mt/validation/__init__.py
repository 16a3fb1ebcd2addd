"""Challenge validation: http-01, dns-01 and tls-alpn-01 (RFC 8555 §8, RFC 8737).

DNS names and IP addresses (RFC 8738) are both covered.

``Validator`` is what the registration authority calls; it returns results
and never writes the store. ``Resolver`` also serves CAA look-ups (RFC 8659).
"""

from __future__ import annotations

from acme_mt.validation.dns01 import txt_record_value
from acme_mt.validation.resolver import CaaRecord, Resolver
from acme_mt.validation.validator import CHALLENGE_TYPES, Validator

__all__ = [
    "CHALLENGE_TYPES",
    "CaaRecord",
    "Resolver",
    "Validator",
    "txt_record_value",
]
