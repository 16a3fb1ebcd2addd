"""The embedded key store: one directory per partition, every key encrypted at rest.

Each key is its PKCS#8 DER (RFC 5958) sealed with AES-256-GCM (NIST SP 800-38D)
under a key-encryption key (KEK), with a fresh 96-bit nonce and the partition
name and label as associated data, so a file copied into another tenant's
directory, or renamed, no longer opens. Files are written to a temporary name
and linked into place, so a reader never sees half a key and a label is never
overwritten. File layout: ``MAGIC || nonce (12 bytes) || ciphertext || tag``.

The KEK comes from ``ACME_MT_KEYSTORE_KEK`` (base64url of 32 bytes), from the
file named by ``[keystore] kek_file`` (the same text), or is generated on first
start into ``DATA/kek``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from acme_mt.errors import ConfigError, KeyStoreError
from acme_mt.keystores.base import SigningKey, parse_key_type

logger = logging.getLogger(__name__)

KEK_ENV = "ACME_MT_KEYSTORE_KEK"
KEK_SIZE = 32
NONCE_SIZE = 12
# Limitation: the header names no KEK, so rotating the KEK means re-sealing every
# file while the server is stopped; a KEK identifier in the header would end that.
MAGIC = b"AMTK\x01"
KEY_SUFFIX = ".key"

_PARTITION_RE = re.compile(r"[a-z0-9_][a-z0-9_-]{0,63}")
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def _decode_kek(data: str | bytes, source: str) -> bytes:
    """Decode base64url (padded or not) into a 32-byte KEK; never echo the value."""
    try:
        text = (data.decode("ascii") if isinstance(data, bytes) else data).strip()
        if not _BASE64URL_RE.fullmatch(text):
            raise ValueError
        kek = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source} is not base64url") from None
    if len(kek) != KEK_SIZE:
        raise ConfigError(f"{source} must hold {KEK_SIZE} bytes, base64url-encoded")
    return kek


def _write_exclusive(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` (mode 0600), failing if ``path`` exists.

    The bytes go to a temporary file created 0600 with O_EXCL and are then
    hard-linked into place, which is atomic and refuses an existing name.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _shred(path: Path) -> None:
    """Overwrite a file with random bytes, flush it to disk, then unlink it.

    Limitation: overwriting in place does not reach copies that copy-on-write
    file systems, SSD wear levelling or backups keep; a per-partition data key
    wrapped by the KEK, destroyed on release, would end that.
    """
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.write(secrets.token_bytes(size))
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


def load_kek(data_dir: Path, environ: Mapping[str, str], kek_file: str | Path = "") -> bytes:
    """Find the key-encryption key: environment, then ``kek_file``, else ``DATA/kek``.

    :raises ConfigError: the KEK is malformed or its file cannot be read or made.
    """
    if KEK_ENV in environ:
        return _decode_kek(environ[KEK_ENV], KEK_ENV)
    if kek_file:
        try:
            raw = Path(kek_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"[keystore] kek_file cannot be read: {exc.strerror}") from None
        return _decode_kek(raw, "[keystore] kek_file")

    path = Path(data_dir) / "kek"
    if not path.exists():
        try:
            Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            encoded = base64.urlsafe_b64encode(secrets.token_bytes(KEK_SIZE)).rstrip(b"=")
            _write_exclusive(path, encoded + b"\n")
            logger.info("generated a new key-encryption key in %s", path)
        except FileExistsError:
            pass  # a process starting beside us made it first
        except OSError as exc:
            raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    try:
        mode = path.stat().st_mode & 0o777
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        logger.warning("%s is readable by others (mode %o); it should be 0600", path, mode)
    return _decode_kek(raw, str(path))


def _new_private_key(param: int | str) -> SigningKey:
    """A new key: an RSA modulus size, or an EC curve name from ``parse_key_type``."""
    if isinstance(param, int):
        return rsa.generate_private_key(public_exponent=65537, key_size=param)
    curve = ec.SECP384R1() if param == "secp384r1" else ec.SECP256R1()
    return ec.generate_private_key(curve)


class FilePartition:
    """One partition's keys in one directory; decrypted keys are cached in memory."""

    def __init__(self, name: str, directory: Path, aead: AESGCM) -> None:
        self.name = name
        self._directory = directory
        self._aead = aead
        self._cache: dict[str, SigningKey] = {}
        self._released = False

    def _path(self, label: str) -> Path:
        if self._released:
            raise KeyStoreError(f"partition {self.name!r} was released")
        if not _LABEL_RE.fullmatch(label):
            raise KeyStoreError(f"invalid key label {label!r}")
        return self._directory / (label + KEY_SUFFIX)

    def _associated_data(self, label: str) -> bytes:
        return MAGIC + self.name.encode() + b"\x00" + label.encode()

    async def generate(self, label: str, key_type: str) -> SigningKey:
        """Create a key under a new label, encrypt it to disk and return it."""
        path = self._path(label)
        if path.exists():
            raise KeyStoreError(f"key {label!r} already exists in partition {self.name!r}")
        try:
            kind, param = parse_key_type(key_type)
        except ConfigError as exc:
            raise KeyStoreError(str(exc)) from None
        if kind == "rsa":
            key = await asyncio.to_thread(_new_private_key, param)
        else:
            key = _new_private_key(param)

        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, der, self._associated_data(label))
        try:
            _write_exclusive(path, MAGIC + nonce + sealed)
        except FileExistsError:
            raise KeyStoreError(
                f"key {label!r} already exists in partition {self.name!r}"
            ) from None
        except OSError as exc:
            raise KeyStoreError(f"cannot write key {label!r}: {exc.strerror}") from None
        self._cache[label] = key
        logger.info("generated %s key %r in partition %r", key_type, label, self.name)
        return key

    async def get(self, label: str) -> SigningKey:
        """Return a key, decrypting it from disk on first use."""
        cached = self._cache.get(label)
        if cached is not None:
            return cached
        path = self._path(label)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"no key {label!r} in partition {self.name!r}") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read key {label!r}: {exc.strerror}") from None

        head = len(MAGIC) + NONCE_SIZE
        if len(blob) <= head or not blob.startswith(MAGIC):
            raise KeyStoreError(f"key {label!r} of partition {self.name!r} is not a key file")
        try:
            der = self._aead.decrypt(
                blob[len(MAGIC) : head], blob[head:], self._associated_data(label)
            )
        except InvalidTag:
            raise KeyStoreError(
                f"key {label!r} of partition {self.name!r} does not decrypt "
                "(wrong KEK, or the file belongs elsewhere)"
            ) from None
        key = serialization.load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise KeyStoreError(f"key {label!r} of partition {self.name!r} has an unknown type")
        self._cache[label] = key
        return key

    async def destroy(self, label: str) -> None:
        """Overwrite and delete a key so nothing can sign with it again."""
        path = self._path(label)
        self._cache.pop(label, None)
        try:
            _shred(path)
            _fsync_dir(self._directory)
        except FileNotFoundError:
            raise KeyStoreError(f"no key {label!r} in partition {self.name!r}") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot destroy key {label!r}: {exc.strerror}") from None
        logger.info("destroyed key %r in partition %r", label, self.name)

    def _release(self) -> None:
        """Shred every file in the directory and remove it; the object stays unusable."""
        self._cache.clear()
        self._released = True
        if not self._directory.exists():
            return
        for entry in self._directory.iterdir():
            _shred(entry)
        self._directory.rmdir()


class FileKeyStore:
    """The file back end of ``KeyStore``: partitions are directories under ``root``.

    ``root`` is the keys directory (``DATA/keys``); ``kek`` the 32-byte KEK.
    """

    def __init__(self, root: Path, kek: bytes) -> None:
        if len(kek) != KEK_SIZE:
            raise KeyStoreError(f"the key-encryption key must be {KEK_SIZE} bytes")
        self._root = Path(root)
        self._aead = AESGCM(kek)
        self._partitions: dict[str, FilePartition] = {}

    def _directory(self, name: str) -> Path:
        if not _PARTITION_RE.fullmatch(name):
            raise KeyStoreError(f"invalid partition name {name!r}")
        return self._root / name

    async def open_partition(self, name: str, *, create: bool = False) -> FilePartition:
        """Return partition ``name``, making its 0700 directory when ``create`` is true."""
        directory = self._directory(name)
        partition = self._partitions.get(name)
        if partition is not None:
            return partition
        if not directory.is_dir():
            if not create:
                raise KeyStoreError(f"no key partition {name!r}")
            try:
                self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
                directory.mkdir(mode=0o700, exist_ok=True)
                os.chmod(directory, 0o700)
            except OSError as exc:
                raise KeyStoreError(f"cannot create partition {name!r}: {exc.strerror}") from None
        partition = FilePartition(name, directory, self._aead)
        self._partitions[name] = partition
        return partition

    async def release_partition(self, name: str) -> None:
        """Destroy every key of a partition and remove its directory (offboarding)."""
        directory = self._directory(name)
        partition = self._partitions.pop(name, None) or FilePartition(name, directory, self._aead)
        try:
            partition._release()
        except OSError as exc:
            raise KeyStoreError(f"cannot release partition {name!r}: {exc.strerror}") from None
        logger.info("released key partition %r", name)

    async def close(self) -> None:
        """Forget every decrypted key held in memory."""
        for partition in self._partitions.values():
            partition._cache.clear()
        self._partitions.clear()
