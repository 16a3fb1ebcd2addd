"""Settings from a TOML file and ``ACME_MT_<SECTION>_<KEY>`` environment variables.

The environment wins over the file, so one image can be configured per
deployment. Secrets (PINs, tokens, passwords) are read from the environment or
from files named here, never from the command line.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from acme_mt.errors import ConfigError


@dataclass(frozen=True)
class ServerSettings:
    https_listen: str = "127.0.0.1:8443"
    http_listen: str = "127.0.0.1:8080"
    https_url: str = "https://localhost:8443"
    http_url: str = "http://localhost:8080"
    data_dir: str = "./acme-mt-data"
    max_body_bytes: int = 64 * 1024
    uvloop: bool = True
    #: Server processes sharing the listeners; 0 is one for each CPU this process may use.
    workers: int = 0
    #: Log every OCSP, CRL and CA-certificate request, not only failed ones.
    log_relying_party_requests: bool = False


@dataclass(frozen=True)
class TlsSettings:
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "sqlite"
    dsn: str = ""
    admin_dsn: str = ""
    pool_min: int = 1
    pool_max: int = 10
    secrets_file: str = ""
    dedicated_pool_max: int = 4


@dataclass(frozen=True)
class KeystoreSettings:
    backend: str = "file"
    module: str = ""
    kek_file: str = ""
    pin_file: str = ""
    so_pin_file: str = ""
    token_prefix: str = "acme-mt:"


@dataclass(frozen=True)
class ValidationSettings:
    dns_resolver: str = ""
    http01_port: int = 80
    tlsalpn01_port: int = 443
    timeout_seconds: float = 10.0
    wait_seconds: float = 0.5


@dataclass(frozen=True)
class ProviderSettings:
    name: str = "acme-mt"
    root_key_type: str = "ec-p384"
    website: str = ""


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    keystore: KeystoreSettings = field(default_factory=KeystoreSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    provider: ProviderSettings = field(default_factory=ProviderSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Turn a TOML or environment value into the type of the default."""
    name = f"[{section}] {key}"
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false")
    if isinstance(default, int | float):
        try:
            return type(default)(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value


def load_settings(
    config_file: str | Path | None = None,
    data_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read settings: defaults, then the TOML file, then the environment, then flags.

    :raises ConfigError: a file that cannot be read, an unknown section or key, a bad value.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if config_file:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
    settings = Settings()
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(raw) - known - {"tenants"})
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)}")
    for section_field in fields(Settings):
        section = section_field.name
        current = getattr(settings, section)
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        keys = {f.name for f in fields(current)}
        extra = sorted(set(values) - keys)
        if extra:
            raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(extra)}")
        changes: dict[str, Any] = {}
        for key in keys:
            default = getattr(current, key)
            env_name = f"ACME_MT_{section.upper()}_{key.upper()}"
            if env_name in environ:
                changes[key] = _coerce(section, key, environ[env_name], default)
            elif key in values:
                changes[key] = _coerce(section, key, values[key], default)
        settings = replace(settings, **{section: replace(current, **changes)})
    if data_dir:
        settings = replace(settings, server=replace(settings.server, data_dir=data_dir))
    return settings


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets) into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        return address.strip("[]"), default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"bad address {address!r}") from None
