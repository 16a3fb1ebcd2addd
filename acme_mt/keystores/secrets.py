"""PINs of the PKCS#11 tokens: configured per partition, or generated and kept in a 0600 file.

Where a partition's PINs come from, first match wins:

1. ``ACME_MT_KEYSTORE_PINS``: a JSON object, partition name to PINs;
2. the file named by ``[keystore] pin_file``: the same mapping in JSON or TOML;
3. ``DATA/keystore-secrets.json``: PINs this server generated for tokens it made.

A partition's value is its user PIN, or a table ``{user = "...", so = "..."}``.
The security officer (SO) PIN is needed only to initialise or wipe a token; it
may also come from ``ACME_MT_KEYSTORE_SO_PIN`` or ``[keystore] so_pin_file``
(one PIN for every new token). PINs missing when a token is made are generated
and written to the generated file before the token exists, under a file lock,
so the CLI and a running server can both add to it. PINs appear in no log line,
no exception message, no repr and no command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acme_mt.errors import ConfigError, KeyStoreError

logger = logging.getLogger(__name__)

PINS_ENV = "ACME_MT_KEYSTORE_PINS"
SO_PIN_ENV = "ACME_MT_KEYSTORE_SO_PIN"
SECRETS_FILE = "keystore-secrets.json"
PIN_BYTES = 24


@dataclass(frozen=True)
class TokenPins:
    """A token's user PIN and, when known, its SO PIN; the repr shows neither."""

    user: str = field(repr=False)
    so: str | None = field(default=None, repr=False)


def _parse_mapping(text: str, source: str, toml_first: bool) -> dict[str, dict[str, str]]:
    """Read ``partition -> PIN | {user, so}`` from JSON or TOML; never echo a value."""
    raw: Any = None
    parsers = (tomllib.loads, json.loads) if toml_first else (json.loads, tomllib.loads)
    for parse in parsers:
        try:
            raw = parse(text)
            break
        except ValueError:  # JSONDecodeError and TOMLDecodeError are both ValueErrors
            continue
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a JSON or TOML table of partition PINs")
    pins: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        entry = {"user": value} if isinstance(value, str) else value
        if not isinstance(entry, dict) or set(entry) - {"user", "so"}:
            raise ConfigError(f"{source}: partition {name!r} needs a PIN or {{user, so}}")
        if not all(isinstance(pin, str) and pin for pin in entry.values()):
            raise ConfigError(f"{source}: the PINs of partition {name!r} must be non-empty text")
        pins[str(name)] = dict(entry)
    return pins


def _read_secret_file(path: Path, setting: str) -> str:
    try:
        text = path.read_text()
        mode = path.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"{setting} cannot be read: {exc.strerror}") from None
    if mode & 0o077:
        logger.warning("%s is readable by others (mode %o); it should be 0600", path, mode)
    return text


class PinStore:
    """Finds, generates and forgets token PINs for the PKCS#11 key store.

    :raises ConfigError: a configured source is unreadable or malformed.
    """

    def __init__(
        self,
        data_dir: Path,
        environ: Mapping[str, str],
        pin_file: str | Path = "",
        so_pin_file: str | Path = "",
    ) -> None:
        self._path = Path(data_dir) / SECRETS_FILE
        self._lock_path = Path(data_dir) / f".{SECRETS_FILE}.lock"
        self._configured: list[dict[str, dict[str, str]]] = []
        if PINS_ENV in environ:
            self._configured.append(_parse_mapping(environ[PINS_ENV], PINS_ENV, False))
        if pin_file:
            text = _read_secret_file(Path(pin_file), "[keystore] pin_file")
            is_toml = str(pin_file).endswith(".toml")
            self._configured.append(_parse_mapping(text, "[keystore] pin_file", is_toml))
        self._so_pin: str | None = environ.get(SO_PIN_ENV) or None
        if self._so_pin is None and so_pin_file:
            self._so_pin = _read_secret_file(Path(so_pin_file), "[keystore] so_pin_file").strip()
            if not self._so_pin:
                raise ConfigError("[keystore] so_pin_file is empty")

    def _generated(self) -> dict[str, dict[str, str]]:
        try:
            text = self._path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeyStoreError(f"cannot read {self._path}: {exc.strerror}") from None
        try:
            return _parse_mapping(text, str(self._path), False)
        except ConfigError as exc:
            raise KeyStoreError(str(exc)) from None

    def _lookup(self, partition: str) -> tuple[str | None, str | None]:
        user: str | None = None
        so: str | None = None
        for source in [*self._configured, self._generated()]:
            entry = source.get(partition, {})
            user = user or entry.get("user")
            so = so or entry.get("so")
        return user, so or self._so_pin

    def pins(self, partition: str) -> TokenPins | None:
        """The PINs of an existing token, or None when no source names a user PIN."""
        user, so = self._lookup(partition)
        return TokenPins(user, so) if user else None

    def pins_for_new_token(self, partition: str) -> TokenPins:
        """PINs to initialise a token with, generating and saving the missing ones first."""
        with self._locked():
            user, so = self._lookup(partition)
            if user and so:
                return TokenPins(user, so)
            made: dict[str, str] = {}
            if not user:
                user = made["user"] = secrets.token_urlsafe(PIN_BYTES)
            if not so:
                so = made["so"] = secrets.token_urlsafe(PIN_BYTES)
            saved = self._generated()
            saved[partition] = {**saved.get(partition, {}), **made}
            self._save(saved)
            return TokenPins(user, so)

    def has_generated(self, partition: str) -> bool:
        """Whether this data directory already holds generated PINs for ``partition``."""
        return partition in self._generated()

    def forget(self, partition: str) -> None:
        """Drop a released partition's generated PINs."""
        with self._locked():
            saved = self._generated()
            if saved.pop(partition, None) is not None:
                self._save(saved)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the generated file across processes."""
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"cannot lock {self._lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _save(self, pins: dict[str, dict[str, str]]) -> None:
        """Replace the generated file atomically; it is created 0600 and never widened."""
        tmp = self._path.with_name(f".{self._path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(pins, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
            directory = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise KeyStoreError(f"cannot write {self._path}: {exc.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
