"""The PKCS#11 key store: one token per partition, keys made on the token and kept there.

Each partition (a tenant id, or ``_provider``) owns the token labelled
``acme-mt:<name>`` (``[keystore] token_prefix``); tokens are always found by
label, because slot ids change. A missing token is made on a free slot with
``C_InitToken`` and given its PINs (``acme_mt.keystores.secrets``); a token an
operator made beforehand under that label is claimed with the configured PINs.
Partitions are ``acme_mt.keystores.pkcs11_partition``; the module, its locking
and its re-initialisation are ``acme_mt.keystores.pkcs11_module``.

A token made by another process (``acme-mt tenant create`` beside a running
server) is looked for by re-initialising the module, at most once per
``SEARCH_INTERVAL`` per label, so an unknown partition cannot make the server
re-initialise over and over; partitions already open reconnect on their next
call. A partition that cannot be opened (missing token, refused PIN, module
fault) raises ``KeyStoreError`` and is not tried again for ``RETRY_SECONDS``.
Offboarding destroys every object on the token and wipes it with the SO PIN.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time

from pkcs11.exceptions import PKCS11Error

from acme_mt.errors import KeyStoreError
from acme_mt.keystores.pkcs11_module import CKR_OK, LABEL_SIZE, Pkcs11Module, rv_name
from acme_mt.keystores.pkcs11_partition import (
    RETRY_SECONDS,
    Pkcs11Partition,
    TokenMissing,
    failed,
)
from acme_mt.keystores.secrets import PinStore

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "acme-mt:"
SEARCH_INTERVAL = 30.0

_PARTITION_RE = re.compile(r"[a-z0-9_][a-z0-9_-]{0,63}")

__all__ = ["Pkcs11KeyStore", "Pkcs11Partition", "TokenMissing"]


class Pkcs11KeyStore:
    """The PKCS#11 back end of ``KeyStore``: one token per partition on one module."""

    def __init__(self, module_path: str, pins: PinStore, token_prefix: str = TOKEN_PREFIX) -> None:
        self.module = Pkcs11Module.load(module_path)
        self._pins = pins
        self._prefix = token_prefix
        self._partitions: dict[str, Pkcs11Partition] = {}
        self._opening = threading.Lock()
        self._failures: dict[str, tuple[float, str]] = {}
        self._searched: dict[str, float] = {}

    def token_label(self, name: str) -> str:
        """The label of partition ``name``'s token. :raises KeyStoreError: bad name."""
        label = self._prefix + name
        if not _PARTITION_RE.fullmatch(name) or len(label.encode()) > LABEL_SIZE:
            raise KeyStoreError(f"invalid partition name {name!r} for a token label")
        return label

    def _attach(self, partition: Pkcs11Partition, create: bool) -> None:
        """Connect to the partition's token, looking harder or making it as needed."""
        try:
            partition.connect()
            return
        except TokenMissing:
            pass
        if create and not self._pins.has_generated(partition.name):
            self._create_token(partition)
            return
        # Another process may have made the token since this one initialised the module.
        last = self._searched.get(partition.token_label)
        if last is None or time.monotonic() - last >= SEARCH_INTERVAL:
            self._searched[partition.token_label] = time.monotonic()
            self.module.reinitialize()
            try:
                partition.connect()
                return
            except TokenMissing:
                pass
        if not create:
            raise TokenMissing(f"no token for key partition {partition.name!r}")
        self._create_token(partition)

    def _create_token(self, partition: Pkcs11Partition) -> None:
        """Initialise a free slot's token for the partition and set its user PIN."""
        pins = self._pins.pins_for_new_token(partition.name)
        if pins.so is None:
            raise KeyStoreError(f"no SO PIN for the token of partition {partition.name!r}")
        with self.module.gate.shared(), self.module.token_lock:
            slot_id = self.module.free_slot()
            if slot_id is None:
                raise KeyStoreError(f"no free slot for the token of partition {partition.name!r}")
            self.module.init_token(slot_id, pins.so, partition.token_label)
            token = self.module.find_token(partition.token_label)
            if token is None:
                raise KeyStoreError(f"token {partition.token_label!r} vanished on creation")
            try:
                session = token.open(rw=True)
            except PKCS11Error as exc:
                raise failed(f"cannot open new token {partition.token_label!r}", exc) from None
            try:
                rv = self.module.login(session, pins.so, security_officer=True)
                if rv != CKR_OK:
                    raise KeyStoreError(f"the new token refused its SO PIN: {rv_name(rv)}")
                session.init_pin(pins.user)
                self.module.logout(session)
            except PKCS11Error as exc:
                raise failed(f"cannot set the PIN of {partition.token_label!r}", exc) from None
            finally:
                self.module.close_session(session)
        logger.info(
            "initialised token %r for key partition %r", partition.token_label, partition.name
        )
        partition.connect()

    def _open(self, name: str, create: bool) -> Pkcs11Partition:
        label = self.token_label(name)
        with self._opening:
            partition = self._partitions.get(name)
            if partition is not None:
                return partition
            failure = self._failures.get(name)
            if failure is not None and time.monotonic() < failure[0]:
                raise KeyStoreError(failure[1])
            partition = Pkcs11Partition(name, label, self.module, self._pins)
            try:
                self._attach(partition, create)
            except KeyStoreError as exc:
                self._failures[name] = (time.monotonic() + RETRY_SECONDS, str(exc))
                raise
            self._failures.pop(name, None)
            self._partitions[name] = partition
            return partition

    async def open_partition(self, name: str, *, create: bool = False) -> Pkcs11Partition:
        """The partition ``name`` with a logged-in session, making its token when ``create``."""
        return await asyncio.to_thread(self._open, name, create)

    def _release(self, name: str) -> None:
        with self._opening:
            partition = self._partitions.pop(name, None)
            if partition is None:
                partition = Pkcs11Partition(name, self.token_label(name), self.module, self._pins)
                try:
                    self._attach(partition, create=False)
                except TokenMissing:
                    self._pins.forget(name)
                    return
            pins = self._pins.pins(name)
            with self.module.gate.shared(), self.module.token_lock:
                slot_id = partition.release_locked()
                # Limitation: a wiped token stays initialised under a label no
                # partition can have; deleting it (softhsm2-util --delete-token,
                # or the HSM's own tools) is left to the operator.
                if pins is not None and pins.so is not None:
                    self.module.init_token(slot_id, pins.so, self._prefix + "-released")
                else:
                    logger.warning(
                        "partition %r: keys destroyed, token not wiped (no SO PIN)", name
                    )
            self._pins.forget(name)

    async def release_partition(self, name: str) -> None:
        """Destroy every key of a partition and wipe its token (offboarding)."""
        await asyncio.to_thread(self._release, name)
        logger.info("released key partition %r", name)

    def _close(self) -> None:
        with self._opening:
            for partition in self._partitions.values():
                partition.close()
            self._partitions.clear()

    async def close(self) -> None:
        """Close every partition's session; the module stays loaded for the process."""
        await asyncio.to_thread(self._close)
