"""Opening the store and key store back ends named by the settings."""

from __future__ import annotations

import os

from acme_mt.config import Settings
from acme_mt.errors import ConfigError
from acme_mt.keystores.base import KeyStore
from acme_mt.storage.base import StoreBackend


def open_store_backend(settings: Settings) -> StoreBackend:
    """The ``[store]`` back end: SQLite files by default."""
    if settings.store.backend == "sqlite":
        from acme_mt.storage.sqlite import SqliteBackend

        return SqliteBackend(settings.data_dir)
    raise ConfigError(f"[store] backend {settings.store.backend!r} is not available")


def open_keystore(settings: Settings) -> KeyStore:
    """The ``[keystore]`` back end: encrypted files by default."""
    if settings.keystore.backend == "file":
        from acme_mt.keystores.file import FileKeyStore, load_kek

        kek = load_kek(settings.data_dir, os.environ, settings.keystore.kek_file)
        return FileKeyStore(settings.data_dir / "keys", kek)
    raise ConfigError(f"[keystore] backend {settings.keystore.backend!r} is not available")
