"""Certificate profiles (draft-ietf-acme-profiles): named sets of issuance rules.

A tenant's policy holds its profiles; newOrder may name one and the tenant's
default applies otherwise. Profiles are frozen and validated when the policy is
loaded, with errors that name the field.

Checklist for a new profile field: add it to ``Profile``, parse it in
``Profile.from_dict``, apply it where orders are made or finalized, and list it
in the README's policy section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from acme_mt.errors import ConfigError

#: Extended key usages a profile may name, by their RFC 5280 §4.2.1.12 names.
EXTENDED_KEY_USAGES: dict[str, ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
}

MAX_VALIDITY_DAYS = 398
_FIELDS = {
    "description",
    "validity_days",
    "key_types",
    "extended_key_usages",
    "authorization_lifetime_hours",
    "order_lifetime_hours",
    "max_identifiers",
    "allow_ip",
}


@dataclass(frozen=True)
class Profile:
    """One named profile; unset fields fall back to the tenant's top-level policy."""

    name: str
    description: str
    validity_days: int
    key_types: tuple[str, ...]
    extended_key_usages: tuple[str, ...]
    authorization_lifetime_hours: int
    order_lifetime_hours: int
    max_identifiers: int
    allow_ip: bool

    @property
    def eku_oids(self) -> tuple[ObjectIdentifier, ...]:
        return tuple(EXTENDED_KEY_USAGES[name] for name in self.extended_key_usages)

    @classmethod
    def from_dict(cls, name: str, raw: Any, defaults: dict[str, Any]) -> Profile:
        """Build a profile from TOML, filling gaps from ``defaults``; errors name the field."""
        where = f"profiles.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table")
        unknown = sorted(set(raw) - _FIELDS)
        if unknown:
            raise ConfigError(f"unknown field(s) in {where}: {', '.join(unknown)}")
        values = {**defaults, **raw}
        for key in (
            "validity_days",
            "authorization_lifetime_hours",
            "order_lifetime_hours",
            "max_identifiers",
        ):
            if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
                raise ConfigError(f"{where}.{key} must be a positive integer")
        if values["validity_days"] > MAX_VALIDITY_DAYS:
            raise ConfigError(f"{where}.validity_days must be at most {MAX_VALIDITY_DAYS}")
        if not isinstance(values["allow_ip"], bool):
            raise ConfigError(f"{where}.allow_ip must be true or false")
        if not isinstance(values["description"], str):
            raise ConfigError(f"{where}.description must be a string")
        for key in ("key_types", "extended_key_usages"):
            if not isinstance(values[key], list | tuple) or not values[key]:
                raise ConfigError(f"{where}.{key} must be a non-empty list")
        bad_eku = [e for e in values["extended_key_usages"] if e not in EXTENDED_KEY_USAGES]
        if bad_eku:
            raise ConfigError(
                f"{where}.extended_key_usages: unknown {', '.join(map(str, bad_eku))}; "
                f"known: {', '.join(EXTENDED_KEY_USAGES)}"
            )
        return cls(
            name=name,
            description=values["description"],
            validity_days=values["validity_days"],
            key_types=tuple(values["key_types"]),
            extended_key_usages=tuple(values["extended_key_usages"]),
            authorization_lifetime_hours=values["authorization_lifetime_hours"],
            order_lifetime_hours=values["order_lifetime_hours"],
            max_identifiers=values["max_identifiers"],
            allow_ip=values["allow_ip"],
        )
