"""One PKCS#11 key partition: a token, its long-lived session, and the keys made on it.

A partition keeps one logged-in session (PKCS#11 v2.40: login state belongs to
the token and the process, and the first login covers every session of the
process), opened lazily and again after the module is re-initialised. Keys are
generated on the token as token objects that are private, sensitive and not
extractable, with a random CKA_ID, and are refused unless the token then
reports them ALWAYS_SENSITIVE and NEVER_EXTRACTABLE. A key is found by label
and CKA_ID together, so a handle on a destroyed key never signs with a new key
that took its label.

Threads: every call enters the module's ``Gate`` and holds the partition's
lock, so the session serves one call at a time while other tokens work in
parallel; key generation uses a short-lived second session and holds up no
signature. A partition whose session fails to reopen is not tried again for
``RETRY_SECONDS``, so a token that refuses its PIN is not hammered with logins.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
import time
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, SignMixin
from pkcs11.exceptions import (
    DeviceRemoved,
    PKCS11Error,
    SessionClosed,
    SessionHandleInvalid,
    TokenNotPresent,
    UserNotLoggedIn,
)
from pkcs11.util.ec import encode_named_curve_parameters

from acme_mt.errors import ConfigError, KeyStoreError
from acme_mt.keystores.base import parse_key_type
from acme_mt.keystores.pkcs11_keys import (
    KeyInfo,
    Pkcs11EcKey,
    Pkcs11RsaKey,
    TokenKey,
    ec_key_type,
    ec_public_key,
    spki_fingerprint,
)
from acme_mt.keystores.pkcs11_module import CKR_OK, Pkcs11Module, rv_name
from acme_mt.keystores.secrets import PinStore

logger = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
KEY_ID_BYTES = 16

_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_GONE = (SessionHandleInvalid, SessionClosed, TokenNotPresent, DeviceRemoved)
_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
}
_PUBLIC_TEMPLATE = {Attribute.TOKEN: True, Attribute.PRIVATE: False}
#: What a new private key must report about itself before it is used.
_PROTECTED = {
    **_PRIVATE_TEMPLATE,
    Attribute.ALWAYS_SENSITIVE: True,
    Attribute.NEVER_EXTRACTABLE: True,
}


class TokenMissing(KeyStoreError):
    """No initialised token carries the partition's label."""


def failed(what: str, exc: PKCS11Error) -> KeyStoreError:
    """A KeyStoreError naming the PKCS#11 error class; module messages may hold anything."""
    return KeyStoreError(f"{what}: {type(exc).__name__}")


class Pkcs11Partition:
    """One partition's token and its long-lived session."""

    def __init__(self, name: str, token_label: str, module: Pkcs11Module, pins: PinStore) -> None:
        self.name = name
        self.token_label = token_label
        self._module = module
        self._pins = pins
        self._lock = threading.Lock()
        self._generating = threading.Lock()
        self._token: pkcs11.Token | None = None
        self._session: pkcs11.Session | None = None
        self._generation = -1
        self._handles: dict[bytes, SignMixin] = {}
        self._keys: dict[str, TokenKey] = {}
        self._released = False
        self._retry_at = 0.0
        self._failure = ""

    # The methods below whose names end in _locked run inside the module's gate
    # with self._lock held.

    def _connect_locked(self) -> pkcs11.Session:
        token = self._module.find_token(self.token_label)
        if token is None:
            raise TokenMissing(f"no token for key partition {self.name!r}")
        pins = self._pins.pins(self.name)
        if pins is None:
            raise KeyStoreError(f"no user PIN is configured for key partition {self.name!r}")
        try:
            session = token.open(rw=True)
        except PKCS11Error as exc:
            raise failed(f"cannot open the token of partition {self.name!r}", exc) from None
        rv = self._module.login(session, pins.user)
        if rv != CKR_OK:
            self._module.close_session(session)
            raise KeyStoreError(
                f"the token of partition {self.name!r} refused the login: {rv_name(rv)}"
            )
        self._token, self._session = token, session
        self._generation = self._module.generation
        return session

    def _session_locked(self) -> pkcs11.Session:
        """The live session, reconnecting after a re-initialisation or a lost session."""
        if self._released:
            raise KeyStoreError(f"key partition {self.name!r} was released")
        if self._session is not None and self._generation == self._module.generation:
            return self._session
        # Sessions from before a re-initialisation are gone; their handle numbers
        # may name new sessions by now, so they are dropped, never closed.
        self._session, self._token = None, None
        self._handles.clear()
        if time.monotonic() < self._retry_at:
            raise KeyStoreError(self._failure)
        try:
            return self._connect_locked()
        except KeyStoreError as exc:
            self._retry_at, self._failure = time.monotonic() + RETRY_SECONDS, str(exc)
            raise

    def connect(self) -> None:
        """Find the token and log in now. :raises TokenMissing: no token has the label."""
        with self._module.gate.shared(), self._lock:
            self._connect_locked()

    def _find_locked(self, template: dict[Attribute, Any]) -> list[pkcs11.Object]:
        session = self._session_locked()
        try:
            return list(session.get_objects(template))
        except PKCS11Error as exc:
            raise failed(f"cannot search the token of partition {self.name!r}", exc) from None

    def _private_locked(self, label: str, key_id: bytes | None = None) -> Any:
        template: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            Attribute.LABEL: label,
        }
        if key_id is not None:
            template[Attribute.ID] = key_id
        found = self._find_locked(template)
        if len(found) != 1:
            raise KeyStoreError(
                f"no key {label!r} in partition {self.name!r}"
                if not found
                else f"{len(found)} keys are labelled {label!r} in partition {self.name!r}"
            )
        return found[0]

    def sign_raw(self, info: KeyInfo, data: bytes, mechanism: Mechanism) -> bytes:
        """One C_Sign with the key ``info`` names; the hot path of every signature."""
        gate = self._module.gate
        gate.enter()
        try:
            with self._lock:
                key = self._handles.get(info.key_id)
                if key is None or self._generation != self._module.generation:
                    self._session_locked()
                    key = self._handles[info.key_id] = self._private_locked(info.label, info.key_id)
                try:
                    return bytes(key.sign(data, mechanism=mechanism))
                except PKCS11Error as exc:
                    self._forget_locked(info.key_id, exc)
                    raise failed(f"partition {self.name!r} could not sign", exc) from None
        finally:
            gate.leave()

    def _forget_locked(self, key_id: bytes, exc: PKCS11Error) -> None:
        """After a failed call: find the key again next time, reconnect if the session died."""
        self._handles.pop(key_id, None)
        if isinstance(exc, UserNotLoggedIn) and self._session is not None:
            self._module.close_session(self._session)
        if isinstance(exc, (*_GONE, UserNotLoggedIn)):
            self._session = None

    def _adapter_locked(self, label: str) -> TokenKey:
        """Read a key's public half and attributes and wrap it for cryptography."""
        private = self._private_locked(label)
        try:
            attrs = private.get_attributes(
                [Attribute.KEY_TYPE, Attribute.ID, Attribute.SENSITIVE, Attribute.EXTRACTABLE]
            )
            if not attrs[Attribute.SENSITIVE] or attrs[Attribute.EXTRACTABLE]:
                raise KeyStoreError(f"key {label!r} of partition {self.name!r} could leave it")
            key_id = bytes(attrs[Attribute.ID])
            if attrs[Attribute.KEY_TYPE] == KeyType.RSA:
                numbers = private.get_attributes([Attribute.MODULUS, Attribute.PUBLIC_EXPONENT])
                public: Any = rsa.RSAPublicNumbers(
                    int.from_bytes(numbers[Attribute.PUBLIC_EXPONENT]),
                    int.from_bytes(numbers[Attribute.MODULUS]),
                ).public_key()
                key_type = f"rsa-{public.key_size}"
            elif attrs[Attribute.KEY_TYPE] == KeyType.EC:
                template = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}
                halves = self._find_locked({**template, Attribute.LABEL: label})
                if len(halves) != 1:
                    raise KeyStoreError(
                        f"key {label!r} of partition {self.name!r} has no public half"
                    )
                point = halves[0].get_attributes([Attribute.EC_PARAMS, Attribute.EC_POINT])
                public = ec_public_key(point[Attribute.EC_PARAMS], point[Attribute.EC_POINT])
                key_type = ec_key_type(public)
            else:
                raise KeyStoreError(f"key {label!r} of partition {self.name!r} has an unknown type")
        except PKCS11Error as exc:
            raise failed(f"cannot read key {label!r} of partition {self.name!r}", exc) from None
        info = KeyInfo(
            self.name, label, key_id, key_type, self.token_label, spki_fingerprint(public)
        )
        adapter: TokenKey = (
            Pkcs11RsaKey(self, info, public)
            if isinstance(public, rsa.RSAPublicKey)
            else Pkcs11EcKey(self, info, public)
        )
        self._handles[key_id] = private
        self._keys[label] = adapter
        return adapter

    def _get(self, label: str) -> TokenKey:
        with self._module.gate.shared(), self._lock:
            return self._adapter_locked(label)

    async def get(self, label: str) -> TokenKey:
        """A signing handle for an existing key; its private half stays on the token."""
        cached = self._keys.get(label)
        if cached is not None and not self._released:
            return cached
        if not _LABEL_RE.fullmatch(label):
            raise KeyStoreError(f"invalid key label {label!r}")
        return await asyncio.to_thread(self._get, label)

    def _generate(self, label: str, kind: str, param: int | str) -> TokenKey:
        gate = self._module.gate
        with self._generating, gate.shared():
            with self._lock:
                if self._find_locked({Attribute.LABEL: label}):
                    raise KeyStoreError(f"key {label!r} already exists in partition {self.name!r}")
                token = self._token
            assert token is not None
            key_id = secrets.token_bytes(KEY_ID_BYTES)
            try:
                # A second session, so signing on the main one goes on meanwhile.
                work = token.open(rw=True)
            except PKCS11Error as exc:
                raise failed(f"cannot open the token of partition {self.name!r}", exc) from None
            try:
                self._generate_pair(work, label, key_id, kind, param)
            finally:
                self._module.close_session(work)
            with self._lock:
                return self._adapter_locked(label)

    def _generate_pair(
        self, work: pkcs11.Session, label: str, key_id: bytes, kind: str, param: int | str
    ) -> None:
        public_template: dict[Attribute, Any] = dict(_PUBLIC_TEMPLATE)
        if kind == "ec":
            public_template[Attribute.EC_PARAMS] = encode_named_curve_parameters(str(param))
        try:
            public, private = work.generate_keypair(
                KeyType.EC if kind == "ec" else KeyType.RSA,
                param if isinstance(param, int) else None,
                id=key_id,
                label=label,
                store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template=public_template,
                private_template=_PRIVATE_TEMPLATE,
            )
            seen = private.get_attributes(list(_PROTECTED))
            wrong = sorted(attr.name for attr, want in _PROTECTED.items() if seen[attr] != want)
            if wrong:
                private.destroy()
                public.destroy()
                raise KeyStoreError(
                    f"the token of partition {self.name!r} made key {label!r} without "
                    f"{', '.join(wrong)}; it was destroyed"
                )
        except PKCS11Error as exc:
            raise failed(f"cannot generate key {label!r} in partition {self.name!r}", exc) from None

    async def generate(self, label: str, key_type: str) -> TokenKey:
        """Make a key pair on the token under a new label and return its signing handle."""
        if not _LABEL_RE.fullmatch(label):
            raise KeyStoreError(f"invalid key label {label!r}")
        try:
            kind, param = parse_key_type(key_type)
        except ConfigError as exc:
            raise KeyStoreError(str(exc)) from None
        key = await asyncio.to_thread(self._generate, label, kind, param)
        logger.info(
            "generated %s key %r in partition %r on its token (key id %s, SPKI SHA-256 %s)",
            key_type,
            label,
            self.name,
            key.info.key_id.hex(),
            key.info.fingerprint,
        )
        return key

    def _destroy(self, label: str) -> None:
        with self._module.gate.shared(), self._lock:
            found = self._find_locked({Attribute.LABEL: label})
            if not found:
                raise KeyStoreError(f"no key {label!r} in partition {self.name!r}")
            try:
                for item in found:
                    item.destroy()
            except PKCS11Error as exc:
                raise failed(f"cannot destroy key {label!r} of {self.name!r}", exc) from None
            finally:
                adapter = self._keys.pop(label, None)
                if adapter is not None:
                    self._handles.pop(adapter.info.key_id, None)

    async def destroy(self, label: str) -> None:
        """Destroy a key's objects on the token, so no handle can sign with it again."""
        if not _LABEL_RE.fullmatch(label):
            raise KeyStoreError(f"invalid key label {label!r}")
        await asyncio.to_thread(self._destroy, label)
        logger.info("destroyed key %r in partition %r", label, self.name)

    def release_locked(self) -> int:
        """Destroy every object on the token and end the session; call inside the gate.

        :returns: the token's slot id, for wiping it.
        """
        with self._lock:
            found = self._find_locked({})
            try:
                for item in found:
                    item.destroy()
            except PKCS11Error as exc:
                raise failed(f"cannot empty the token of {self.name!r}", exc) from None
            assert self._token is not None and self._session is not None
            slot_id = int(self._token.slot.slot_id)
            self._module.close_session(self._session)
            self._session, self._token, self._released = None, None, True
            self._handles.clear()
            self._keys.clear()
            return slot_id

    def close(self) -> None:
        """Close the session (the last one on the token logs the process out)."""
        with self._module.gate.shared(), self._lock:
            if self._session is not None and self._generation == self._module.generation:
                self._module.close_session(self._session)
            self._session, self._token = None, None
            self._handles.clear()
