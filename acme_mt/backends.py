"""Opening the store and key store back ends named by the settings."""

from __future__ import annotations

import os
from collections.abc import Callable

from acme_mt.config import Settings
from acme_mt.errors import ConfigError
from acme_mt.keystores.base import KeyStore
from acme_mt.storage.base import StoreBackend
from acme_mt.tenancy.nonces import NonceService


def open_store_backend(settings: Settings) -> StoreBackend:
    """The ``[store]`` back end: SQLite files by default."""
    if settings.store.backend == "sqlite":
        from acme_mt.storage.sqlite import SqliteBackend

        return SqliteBackend(settings.data_dir)
    if settings.store.backend == "postgres":
        from acme_mt.storage.postgres import PostgresBackend

        return PostgresBackend(settings.store, settings.data_dir)
    raise ConfigError(f"[store] backend {settings.store.backend!r} is not available")


def shared_nonce_factory(stores: StoreBackend) -> Callable[[str], NonceService] | None:
    """Nonces every replica shares, when the store back end keeps them; else None (in process)."""
    factory = getattr(stores, "nonce_service", None)
    return factory if callable(factory) else None


def open_keystore(settings: Settings) -> KeyStore:
    """The ``[keystore]`` back end: encrypted files by default, or PKCS#11 tokens."""
    if settings.keystore.backend == "file":
        from acme_mt.keystores.file import FileKeyStore, load_kek

        kek = load_kek(settings.data_dir, os.environ, settings.keystore.kek_file)
        return FileKeyStore(settings.data_dir / "keys", kek)
    if settings.keystore.backend == "pkcs11":
        from acme_mt.keystores.pkcs11 import Pkcs11KeyStore
        from acme_mt.keystores.secrets import PinStore

        if not settings.keystore.module:
            raise ConfigError("[keystore] backend pkcs11 needs module, the PKCS#11 library path")
        pins = PinStore(
            settings.data_dir,
            os.environ,
            settings.keystore.pin_file,
            settings.keystore.so_pin_file,
        )
        return Pkcs11KeyStore(settings.keystore.module, pins, settings.keystore.token_prefix)
    raise ConfigError(f"[keystore] backend {settings.keystore.backend!r} is not available")
