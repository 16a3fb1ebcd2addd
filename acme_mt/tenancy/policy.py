"""A tenant's certificate policy: what it issues, to whom, for how long.

Policies are frozen values validated when built; every error names the field.
Checklist for a new policy field: add it to ``TenantPolicy``, parse it in
``TenantPolicy.from_dict``, emit it in ``to_dict``, enforce it where it applies
and test both the accepted and the rejected case.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from acme_mt.errors import ConfigError
from acme_mt.tenancy.profiles import Profile

#: Key types a CSR (or a CA) may use, by the names policies and key stores share.
KNOWN_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")

MAX_CA_VALIDITY_DAYS = 398


@dataclass(frozen=True)
class TenantPolicy:
    """Issuance rules of one tenant, enforced at newOrder and at finalize."""

    require_eab: bool = True
    max_validity_days: int = 90
    key_types: tuple[str, ...] = KNOWN_KEY_TYPES
    allowed_suffixes: tuple[str, ...] = ()
    authorization_lifetime_hours: int = 24 * 7
    order_lifetime_hours: int = 24 * 7
    max_identifiers: int = 100
    ocsp: bool = True
    ocsp_nonce: bool = True
    crl_shards: int = 1
    crl_lifetime_hours: int = 24
    ca_key_type: str = "ec-p256"
    caa_identities: tuple[str, ...] = field(default=())
    allow_ip: bool = False
    extended_key_usages: tuple[str, ...] = ("serverAuth", "clientAuth")
    default_profile: str = "default"
    profiles: tuple[Profile, ...] = ()
    #: ARI (RFC 9773): certificates issued before this RFC 3339 time should renew now.
    renew_issued_before: str = ""
    #: ARI: the suggested window starts at this fraction of a certificate's lifetime.
    renewal_window_start: float = 0.66
    #: ARI: the Retry-After of renewalInfo answers, so clients notice a moved window.
    renewal_retry_after_seconds: int = 6 * 3600
    #: CAA (RFC 8659): how old a CAA check may be at issuance before it is redone.
    caa_recheck_hours: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.max_validity_days <= MAX_CA_VALIDITY_DAYS:
            raise ConfigError(f"max_validity_days must be 1 to {MAX_CA_VALIDITY_DAYS}")
        unknown = [k for k in self.key_types if k not in KNOWN_KEY_TYPES]
        if unknown or not self.key_types:
            raise ConfigError(f"key_types must be a non-empty subset of {list(KNOWN_KEY_TYPES)}")
        if self.ca_key_type not in KNOWN_KEY_TYPES:
            raise ConfigError(f"ca_key_type must be one of {list(KNOWN_KEY_TYPES)}")
        for suffix in self.allowed_suffixes:
            if not suffix or suffix.startswith("*") or " " in suffix:
                raise ConfigError(f"allowed_suffixes: {suffix!r} is not a domain suffix")
        if not 1 <= self.authorization_lifetime_hours <= 24 * 30:
            raise ConfigError("authorization_lifetime_hours must be 1 to 720")
        if not 1 <= self.order_lifetime_hours <= 24 * 30:
            raise ConfigError("order_lifetime_hours must be 1 to 720")
        if not 1 <= self.max_identifiers <= 1000:
            raise ConfigError("max_identifiers must be 1 to 1000")
        if not 1 <= self.crl_shards <= 1024:
            raise ConfigError("crl_shards must be 1 to 1024")
        if not 1 <= self.crl_lifetime_hours <= 24 * 7:
            raise ConfigError("crl_lifetime_hours must be 1 to 168")
        if not 60 <= self.renewal_retry_after_seconds <= 24 * 3600:
            raise ConfigError("renewal_retry_after_seconds must be 60 to 86400")
        if not 0.0 < self.renewal_window_start < 1.0:
            raise ConfigError("renewal_window_start must be between 0 and 1")
        if self.renew_issued_before:
            try:
                datetime.fromisoformat(self.renew_issued_before.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError("renew_issued_before must be an RFC 3339 time") from None
        for profile in self.profiles:
            bad = [k for k in profile.key_types if k not in KNOWN_KEY_TYPES]
            if bad:
                raise ConfigError(f"profiles.{profile.name}.key_types: unknown {', '.join(bad)}")
        names = [p.name for p in self.profiles]
        if len(set(names)) != len(names):
            raise ConfigError("profiles: a profile name is used twice")
        if self.profiles and self.default_profile not in names:
            raise ConfigError(f"default_profile {self.default_profile!r} is not among profiles")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, default_require_eab: bool = True) -> TenantPolicy:
        """Build a policy from TOML or JSON, rejecting unknown fields by name."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown policy field(s): {', '.join(unknown)}")
        values: dict[str, Any] = {"require_eab": default_require_eab}
        raw = dict(raw)
        raw_profiles = raw.pop("profiles", {})
        for name, value in raw.items():
            expected = cls.__dataclass_fields__[name].type
            if "tuple" in str(expected):
                if not isinstance(value, list | tuple) or not all(
                    isinstance(v, str) for v in value
                ):
                    raise ConfigError(f"{name} must be a list of strings")
                value = tuple(value)
            elif expected in ("bool", bool) and not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false")
            elif expected in ("int", int) and (
                not isinstance(value, int) or isinstance(value, bool)
            ):
                raise ConfigError(f"{name} must be an integer")
            elif expected in ("str", str) and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string")
            elif expected in ("float", float):
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise ConfigError(f"{name} must be a number")
                value = float(value)
            values[name] = value
        base = cls(**values)
        if not isinstance(raw_profiles, dict):
            raise ConfigError("profiles must be a table of named profiles")
        defaults = base.profile_defaults()
        profiles = tuple(
            Profile.from_dict(str(name), body, defaults) for name, body in raw_profiles.items()
        )
        if not profiles:
            return base
        values["profiles"] = profiles
        return cls(**values)

    def profile_defaults(self) -> dict[str, Any]:
        """What a profile inherits from the top-level policy."""
        return {
            "description": "",
            "validity_days": self.max_validity_days,
            "key_types": list(self.key_types),
            "extended_key_usages": list(self.extended_key_usages),
            "authorization_lifetime_hours": self.authorization_lifetime_hours,
            "order_lifetime_hours": self.order_lifetime_hours,
            "max_identifiers": self.max_identifiers,
            "allow_ip": self.allow_ip,
        }

    def profile(self, name: str | None) -> Profile | None:
        """The named profile, the default one for None, or None when the name is unknown."""
        wanted = name or self.default_profile
        for profile in self.all_profiles():
            if profile.name == wanted:
                return profile
        return None

    def all_profiles(self) -> tuple[Profile, ...]:
        """The tenant's profiles; a policy without any has one, ``default``, from its fields."""
        if self.profiles:
            return self.profiles
        return (Profile.from_dict(self.default_profile, {}, self.profile_defaults()),)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["profiles"] = {
            p.name: {k: v for k, v in asdict(p).items() if k != "name"} for p in self.profiles
        }
        return {k: list(v) if isinstance(v, tuple) else v for k, v in raw.items()}

    def allows_name(self, name: str) -> bool:
        """Whether a DNS name (wildcard label stripped) falls under the allowed suffixes."""
        if not self.allowed_suffixes:
            return True
        base = name.lower().removeprefix("*.")
        return any(
            base == suffix.lower() or base.endswith("." + suffix.lower())
            for suffix in self.allowed_suffixes
        )
