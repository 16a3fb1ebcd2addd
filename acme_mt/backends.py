"""Opening the store and key store back ends named by the settings."""

from __future__ import annotations

import os
from collections.abc import Callable

from acme_mt.config import Settings
from acme_mt.errors import ConfigError
from acme_mt.keystores.base import KeyStore
from acme_mt.storage.base import StoreBackend
from acme_mt.tenancy.nonces import NonceService, SignedNonces


def open_store_backend(settings: Settings) -> StoreBackend:
    """The ``[store]`` back end: SQLite files by default."""
    if settings.store.backend == "sqlite":
        from acme_mt.storage.sqlite import SqliteBackend

        return SqliteBackend(settings.data_dir)
    if settings.store.backend == "postgres":
        from acme_mt.storage.postgres import PostgresBackend

        return PostgresBackend(settings.store, settings.data_dir)
    raise ConfigError(f"[store] backend {settings.store.backend!r} is not available")


def shared_nonce_factory(
    stores: StoreBackend, worker_key: bytes | None = None
) -> Callable[[str], NonceService] | None:
    """Nonces that outlive this process's view, or None to keep them in process.

    A store back end that keeps nonces (PostgreSQL) serves every replica. Failing
    that, the worker processes of one server (``worker_key`` set) sign their
    nonces with the key they share and record spent ones where all can see.
    """
    factory = getattr(stores, "nonce_service", None)
    if callable(factory):
        return factory  # type: ignore[no-any-return]
    spent_nonces = getattr(stores, "spent_nonces", None)
    if worker_key is None or not callable(spent_nonces):
        return None
    key = worker_key
    return lambda tenant_id: SignedNonces(key, tenant_id, spent_nonces(tenant_id))


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
