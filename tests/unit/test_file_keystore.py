"""The file key store: encryption at rest, binding to partition and label, modes, lifecycle."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from acme_mt.errors import ConfigError, KeyStoreError
from acme_mt.keystores.base import PROVIDER_PARTITION, KeyStore, SigningKey
from acme_mt.keystores.file import KEK_ENV, FileKeyStore, load_kek

KEK = bytes(range(32))
OTHER_KEK = bytes(range(1, 33))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _private_der(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_der(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so the modes seen are the ones the code asked for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def test_file_keystore_satisfies_protocol(keys_dir: Path) -> None:
    store: KeyStore = FileKeyStore(keys_dir, KEK)
    assert store is not None


def test_load_kek_generates_0600_file_then_reuses_it(tmp_path: Path, open_umask: None) -> None:
    first = load_kek(tmp_path / "data", {})
    path = tmp_path / "data" / "kek"

    assert len(first) == 32
    assert _mode(path) == 0o600
    assert load_kek(tmp_path / "data", {}) == first
    assert [p.name for p in path.parent.iterdir()] == ["kek"]


def test_load_kek_prefers_environment_then_file(tmp_path: Path) -> None:
    encoded = base64.urlsafe_b64encode(KEK).rstrip(b"=").decode()
    kek_file = tmp_path / "kek.txt"
    kek_file.write_text(base64.urlsafe_b64encode(OTHER_KEK).decode() + "\n")

    assert load_kek(tmp_path, {KEK_ENV: encoded}, kek_file) == KEK
    assert load_kek(tmp_path, {}, kek_file) == OTHER_KEK
    assert not (tmp_path / "kek").exists()


@pytest.mark.parametrize(
    "value",
    [
        base64.urlsafe_b64encode(b"x" * 16).decode(),  # too short
        "not base64 at all!",
        base64.urlsafe_b64encode(KEK).decode() + "$$",
    ],
)
def test_load_kek_malformed_environment_is_config_error_without_value(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_kek(tmp_path, {KEK_ENV: value})

    assert KEK_ENV in str(caught.value)
    assert value not in str(caught.value)


def test_load_kek_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kek_file cannot be read"):
        load_kek(tmp_path, {}, tmp_path / "absent")


async def test_generate_then_get_from_a_new_store_returns_same_key(keys_dir: Path) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)
    made = await partition.generate("ca", "ec-p256")

    reopened = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a")
    loaded = await reopened.get("ca")

    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.curve.name == "secp256r1"
    assert _public_der(loaded) == _public_der(made)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
async def test_key_file_is_encrypted_at_rest(keys_dir: Path, key_type: str) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)
    key = await partition.generate("ca", key_type)
    blob = (keys_dir / "tenant-a" / "ca.key").read_bytes()
    der = _private_der(key)

    assert b"-----BEGIN" not in blob
    assert b"PRIVATE KEY" not in blob
    assert der not in blob
    assert der[:16] not in blob  # the PKCS#8 header and version
    if isinstance(key, ec.EllipticCurvePrivateKey):
        scalar = key.private_numbers().private_value.to_bytes(key.curve.key_size // 8, "big")
        assert scalar not in blob
    else:
        prime = key.private_numbers().p.to_bytes(128, "big")
        assert prime[:32] not in blob


async def test_modes_are_0700_and_0600_whatever_the_umask(keys_dir: Path, open_umask: None) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)
    await partition.generate("ca", "ec-p256")

    assert _mode(keys_dir / "tenant-a") == 0o700
    assert _mode(keys_dir / "tenant-a" / "ca.key") == 0o600
    assert sorted(p.name for p in (keys_dir / "tenant-a").iterdir()) == ["ca.key"]


async def test_wrong_kek_fails_cleanly(keys_dir: Path) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)
    await partition.generate("ca", "ec-p256")
    other = await FileKeyStore(keys_dir, OTHER_KEK).open_partition("tenant-a")

    with pytest.raises(KeyStoreError) as caught:
        await other.get("ca")

    message = str(caught.value)
    assert message == (
        "key 'ca' of partition 'tenant-a' does not decrypt "
        "(wrong KEK, or the file belongs elsewhere)"
    )
    assert caught.value.__cause__ is None


async def test_key_file_copied_to_another_partition_does_not_decrypt(keys_dir: Path) -> None:
    store = FileKeyStore(keys_dir, KEK)
    tenant_a = await store.open_partition("tenant-a", create=True)
    tenant_b = await store.open_partition("tenant-b", create=True)
    await tenant_a.generate("ca", "ec-p256")

    blob = (keys_dir / "tenant-a" / "ca.key").read_bytes()
    (keys_dir / "tenant-b" / "ca.key").write_bytes(blob)
    (keys_dir / "tenant-a" / "ca.key").rename(keys_dir / "tenant-a" / "root.key")

    with pytest.raises(KeyStoreError, match="does not decrypt"):
        await tenant_b.get("ca")
    with pytest.raises(KeyStoreError, match="does not decrypt"):
        await tenant_a.get("root")


async def test_truncated_key_file_is_rejected(keys_dir: Path) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)
    (keys_dir / "tenant-a" / "ca.key").write_bytes(b"short")

    with pytest.raises(KeyStoreError, match="is not a key file"):
        await partition.get("ca")


async def test_generate_refuses_existing_label(keys_dir: Path) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)
    first = await partition.generate("ca", "ec-p256")
    fresh = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a")

    with pytest.raises(KeyStoreError, match="already exists"):
        await fresh.generate("ca", "ec-p384")
    assert _public_der(await fresh.get("ca")) == _public_der(first)


async def test_concurrent_generate_of_one_label_keeps_exactly_one(keys_dir: Path) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)

    results = await asyncio.gather(
        partition.generate("ca", "rsa-2048"),
        partition.generate("ca", "rsa-2048"),
        return_exceptions=True,
    )

    keys = [r for r in results if isinstance(r, rsa.RSAPrivateKey)]
    errors = [r for r in results if isinstance(r, KeyStoreError)]
    assert len(keys) == 1 and len(errors) == 1
    stored = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a")
    assert _public_der(await stored.get("ca")) == _public_der(keys[0])
    assert sorted(p.name for p in (keys_dir / "tenant-a").iterdir()) == ["ca.key"]


async def test_get_caches_the_decrypted_key(keys_dir: Path) -> None:
    store = FileKeyStore(keys_dir, KEK)
    partition = await store.open_partition("tenant-a", create=True)
    await partition.generate("ca", "ec-p256")
    loaded = await (await FileKeyStore(keys_dir, KEK).open_partition("tenant-a")).get("ca")

    assert await partition.get("ca") is await partition.get("ca")
    assert await store.open_partition("tenant-a") is partition
    assert loaded is not await partition.get("ca")


async def test_cached_key_signs(keys_dir: Path) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition(PROVIDER_PARTITION, create=True)
    key = await partition.generate("root", "ec-p384")
    assert isinstance(key, ec.EllipticCurvePrivateKey)

    signature = key.sign(b"data", ec.ECDSA(hashes.SHA384()))
    key.public_key().verify(signature, b"data", ec.ECDSA(hashes.SHA384()))


async def test_destroy_overwrites_then_unlinks(keys_dir: Path) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)
    await partition.generate("ca", "ec-p256")
    key_file = keys_dir / "tenant-a" / "ca.key"
    witness = keys_dir / "witness"
    os.link(key_file, witness)  # a second name sees what happens to the same inode
    before = witness.read_bytes()

    await partition.destroy("ca")

    assert not key_file.exists()
    after = witness.read_bytes()
    assert len(after) == len(before) and after != before
    with pytest.raises(KeyStoreError, match="no key 'ca'"):
        await partition.get("ca")
    with pytest.raises(KeyStoreError, match="no key 'ca'"):
        await partition.destroy("ca")


async def test_release_partition_removes_only_that_partition(keys_dir: Path) -> None:
    store = FileKeyStore(keys_dir, KEK)
    tenant_a = await store.open_partition("tenant-a", create=True)
    tenant_b = await store.open_partition("tenant-b", create=True)
    await tenant_a.generate("ca", "ec-p256")
    await tenant_a.generate("old", "ec-p256")
    kept = await tenant_b.generate("ca", "ec-p256")

    await store.release_partition("tenant-a")

    assert not (keys_dir / "tenant-a").exists()
    with pytest.raises(KeyStoreError, match="was released"):
        await tenant_a.get("ca")
    with pytest.raises(KeyStoreError, match="no key partition 'tenant-a'"):
        await store.open_partition("tenant-a")
    reopened = await FileKeyStore(keys_dir, KEK).open_partition("tenant-b")
    assert _public_der(await reopened.get("ca")) == _public_der(kept)


async def test_open_partition_without_create_requires_it_to_exist(keys_dir: Path) -> None:
    store = FileKeyStore(keys_dir, KEK)

    with pytest.raises(KeyStoreError, match="no key partition 'tenant-a'"):
        await store.open_partition("tenant-a")
    assert not keys_dir.exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "UPPER"])
async def test_bad_partition_names_are_refused(keys_dir: Path, name: str) -> None:
    store = FileKeyStore(keys_dir, KEK)

    with pytest.raises(KeyStoreError, match="invalid partition name"):
        await store.open_partition(name, create=True)
    assert not keys_dir.exists()


@pytest.mark.parametrize("label", ["../ca", "ca/x", ".ca", "", "ca.key"])
async def test_bad_labels_are_refused(keys_dir: Path, label: str) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)

    with pytest.raises(KeyStoreError, match="invalid key label"):
        await partition.generate(label, "ec-p256")
    assert list((keys_dir / "tenant-a").iterdir()) == []


async def test_unknown_key_type_is_keystore_error(keys_dir: Path) -> None:
    partition = await FileKeyStore(keys_dir, KEK).open_partition("tenant-a", create=True)

    with pytest.raises(KeyStoreError, match="unsupported key type 'ec-p521'"):
        await partition.generate("ca", "ec-p521")


def test_kek_of_wrong_size_is_refused(keys_dir: Path) -> None:
    with pytest.raises(KeyStoreError, match="must be 32 bytes"):
        FileKeyStore(keys_dir, b"short")
