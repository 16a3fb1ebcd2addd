"""The PKCS#11 key store on a real SoftHSM2: keys on tokens, isolation, PINs, processes, threads."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass

from acme_mt.errors import KeyStoreError
from acme_mt.issuance.signer import sign
from acme_mt.keystores.base import KeyStore
from acme_mt.keystores.pkcs11 import Pkcs11KeyStore, Pkcs11Partition, TokenMissing
from acme_mt.keystores.pkcs11_keys import Pkcs11EcKey, TokenKey
from acme_mt.keystores.secrets import PINS_ENV, SECRETS_FILE, PinStore
from acme_mt.models import utcnow
from tests.support.live import REPO
from tests.support.softhsm import SoftHsm, softhsm_fixture  # noqa: F401 - the fixture

KEY_TYPES = ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
#: Bytes that only a private key file would hold: PEM armour and the PKCS#8 algorithm OIDs.
KEY_MARKERS = [
    b"PRIVATE KEY",
    bytes.fromhex("06072a8648ce3d0201"),  # id-ecPublicKey
    bytes.fromhex("06092a864886f70d010101"),  # rsaEncryption
]


def new_partition_name() -> str:
    return "t" + secrets.token_hex(10)


def make_store(
    hsm: SoftHsm, data_dir: Path, environ: dict[str, str] | None = None
) -> Pkcs11KeyStore:
    return Pkcs11KeyStore(hsm.module, PinStore(data_dir, environ or {}))


def verify(key: TokenKey, signature: bytes, data: bytes) -> None:
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


def sign_bytes(key: TokenKey, data: bytes) -> bytes:
    if isinstance(key, Pkcs11EcKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def raw_private_key(hsm: SoftHsm, partition: Pkcs11Partition, key: TokenKey) -> pkcs11.PrivateKey:
    """The key as python-pkcs11 sees it through a session of its own on the partition's token."""
    token = partition._module.find_token(partition.token_label)
    assert token is not None
    session = token.open()
    found = list(
        session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key.info.key_id}
        )
    )
    assert len(found) == 1
    return found[0]  # type: ignore[return-value]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def store(softhsm: SoftHsm, data_dir: Path) -> AsyncIterator[Pkcs11KeyStore]:
    keystore = make_store(softhsm, data_dir)
    yield keystore
    await keystore.close()


async def test_pkcs11_store_satisfies_protocol(store: Pkcs11KeyStore) -> None:
    keystore: KeyStore = store
    assert keystore is not None
    assert store.module.os_locking


@pytest.mark.parametrize("key_type", KEY_TYPES)
async def test_generate_then_sign_certificate_verifies(
    store: Pkcs11KeyStore, key_type: str
) -> None:
    partition = await store.open_partition(new_partition_name(), create=True)
    key = await partition.generate("ca", key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"token {key_type}")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(utcnow())
        .not_valid_after(utcnow() + timedelta(days=1))
    )

    certificate = await sign(builder, key)

    certificate.verify_directly_issued_by(certificate)
    signature = await asyncio.to_thread(sign_bytes, key, b"payload")
    verify(key, signature, b"payload")
    assert key.info.key_type == key_type
    assert (await partition.get("ca")) is key


async def test_keys_are_sensitive_and_never_extractable(
    softhsm: SoftHsm,
    store: Pkcs11KeyStore,
) -> None:
    partition = await store.open_partition(new_partition_name(), create=True)
    for label, key_type in (("ec", "ec-p256"), ("rsa", "rsa-2048")):
        key = await partition.generate(label, key_type)
        raw = raw_private_key(softhsm, partition, key)
        wanted = [
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.SENSITIVE,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.NEVER_EXTRACTABLE,
        ]
        attrs = raw.get_attributes(wanted)
        assert [attrs[a] for a in wanted] == [True, True, True, True, False, True]
        secret = Attribute.VALUE if key_type.startswith("ec") else Attribute.PRIVATE_EXPONENT
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            raw[secret]
        with pytest.raises(KeyStoreError, match="cannot be exported"):
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )


async def test_partition_cannot_find_or_use_another_partitions_keys(
    softhsm: SoftHsm,
    store: Pkcs11KeyStore,
) -> None:
    alpha = await store.open_partition(new_partition_name(), create=True)
    beta = await store.open_partition(new_partition_name(), create=True)
    alpha_key = await alpha.generate("ca", "ec-p256")
    beta_key = await beta.generate("ca", "ec-p256")
    await beta.generate("only-beta", "ec-p256")

    assert alpha_key.public_key() != beta_key.public_key()
    assert (await alpha.get("ca")).public_key() == alpha_key.public_key()
    with pytest.raises(KeyStoreError, match="no key 'only-beta'"):
        await alpha.get("only-beta")
    token = store.module.find_token(alpha.token_label)
    assert token is not None
    session = token.open()
    assert list(session.get_objects({Attribute.ID: beta_key.info.key_id})) == []
    with pytest.raises(KeyStoreError):
        # Beta's key identity presented to alpha's session signs nothing.
        alpha.sign_raw(beta_key.info, bytes(32), pkcs11.Mechanism.ECDSA)
    assert alpha_key.info.token_label != beta_key.info.token_label


async def test_duplicate_label_and_unknown_partition_are_refused(store: Pkcs11KeyStore) -> None:
    partition = await store.open_partition(new_partition_name(), create=True)
    await partition.generate("ca", "ec-p256")

    with pytest.raises(KeyStoreError, match="already exists"):
        await partition.generate("ca", "ec-p384")
    with pytest.raises(KeyStoreError, match="unsupported key type"):
        await partition.generate("other", "ec-p521")
    with pytest.raises(TokenMissing):
        await store.open_partition(new_partition_name())


async def test_destroyed_key_cannot_sign_even_after_label_is_reused(store: Pkcs11KeyStore) -> None:
    partition = await store.open_partition(new_partition_name(), create=True)
    old = await partition.generate("ca", "ec-p256")
    await partition.destroy("ca")

    with pytest.raises(KeyStoreError, match="no key 'ca'"):
        await partition.get("ca")
    new = await partition.generate("ca", "ec-p256")
    with pytest.raises(KeyStoreError, match="no key 'ca'"):
        await asyncio.to_thread(sign_bytes, old, b"x")
    verify(new, await asyncio.to_thread(sign_bytes, new, b"x"), b"x")


async def test_release_destroys_keys_and_wipes_token(
    softhsm: SoftHsm,
    data_dir: Path,
    store: Pkcs11KeyStore,
) -> None:
    name = new_partition_name()
    partition = await store.open_partition(name, create=True)
    key = await partition.generate("ca", "ec-p256")
    await store.release_partition(name)

    with pytest.raises(KeyStoreError, match="released"):
        await asyncio.to_thread(sign_bytes, key, b"x")
    other = make_store(softhsm, data_dir)
    with pytest.raises(KeyStoreError):
        await other.open_partition(name)
    assert not PinStore(data_dir, {}).has_generated(name)
    assert store.module.find_token(partition.token_label) is None


async def test_wrong_pin_raises_keystore_error_without_the_pin(
    softhsm: SoftHsm,
    data_dir: Path,
) -> None:
    name = new_partition_name()
    first = make_store(softhsm, data_dir)
    await (await first.open_partition(name, create=True)).generate("ca", "ec-p256")
    await first.close()  # the last session on the token: the process is logged out

    wrong = make_store(softhsm, data_dir, {PINS_ENV: json.dumps({name: "not-the-pin-1234"})})
    with pytest.raises(KeyStoreError) as caught:
        await wrong.open_partition(name)
    assert "CKR_PIN_INCORRECT" in str(caught.value)
    assert "not-the-pin-1234" not in str(caught.value)
    with pytest.raises(KeyStoreError):  # remembered for a while, not retried at once
        await wrong.open_partition(name)

    right = make_store(softhsm, data_dir)
    key = await (await right.open_partition(name)).get("ca")
    verify(key, await asyncio.to_thread(sign_bytes, key, b"x"), b"x")
    await right.close()


async def test_no_key_material_on_disk_outside_the_token_directory(
    softhsm: SoftHsm,
    data_dir: Path,
    store: Pkcs11KeyStore,
) -> None:
    partition = await store.open_partition(new_partition_name(), create=True)
    for key_type in ("ec-p256", "rsa-2048"):
        await partition.generate(key_type, key_type)

    files = [path for path in data_dir.rglob("*") if path.is_file()]
    assert {path.name for path in files} == {SECRETS_FILE, f".{SECRETS_FILE}.lock"}
    for path in files:
        blob = path.read_bytes()
        assert not [marker for marker in KEY_MARKERS if marker in blob], path
    assert (data_dir / SECRETS_FILE).stat().st_mode & 0o777 == 0o600
    assert data_dir not in softhsm.token_dir.parents


async def test_async_methods_leave_the_event_loop_running(store: Pkcs11KeyStore) -> None:
    partition = await store.open_partition(new_partition_name(), create=True)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await partition.generate("ca", "rsa-2048")
    ticker.cancel()
    assert ticks > 1


CHILD = """
import asyncio, sys
from acme_mt.keystores.pkcs11 import Pkcs11KeyStore
from acme_mt.keystores.secrets import PinStore
from cryptography.hazmat.primitives import serialization

async def main() -> None:
    store = Pkcs11KeyStore(sys.argv[1], PinStore(sys.argv[2], {}))
    key = await (await store.open_partition(sys.argv[3], create=True)).generate("ca", "ec-p384")
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    print(pem.decode(), end="")
    await store.close()

asyncio.run(main())
"""


async def test_token_made_by_another_process_is_found_and_open_ones_keep_signing(
    softhsm: SoftHsm,
    data_dir: Path,
    store: Pkcs11KeyStore,
) -> None:
    mine = await store.open_partition(new_partition_name(), create=True)
    my_key = await mine.generate("ca", "ec-p256")
    generation = store.module.generation
    theirs = new_partition_name()

    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CHILD, softhsm.module, str(data_dir), theirs],
        env={**softhsm.env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr

    found = await (await store.open_partition(theirs)).get("ca")
    assert found.public_key() == serialization.load_pem_public_key(child.stdout.encode())
    assert store.module.generation == generation + 1
    verify(found, await asyncio.to_thread(sign_bytes, found, b"x"), b"x")
    verify(my_key, await asyncio.to_thread(sign_bytes, my_key, b"x"), b"x")


async def test_threads_signing_while_keys_are_made_and_module_reinitialised(
    store: Pkcs11KeyStore,
) -> None:
    keys: list[TokenKey] = []
    partitions = []
    for _ in range(2):
        partition = await store.open_partition(new_partition_name(), create=True)
        partitions.append(partition)
        for key_type in ("ec-p256", "ec-p384", "rsa-2048"):
            keys.append(await partition.generate(key_type, key_type))
    errors: list[BaseException] = []
    verified = [0]
    count_lock = threading.Lock()

    def hammer(seed: int) -> None:
        try:
            for i in range(60):
                key = keys[(seed + i) % len(keys)]
                data = f"{seed}-{i}".encode()
                verify(key, sign_bytes(key, data), data)
                with count_lock:
                    verified[0] += 1
        except BaseException as exc:
            errors.append(exc)

    def churn() -> None:
        try:
            for i in range(3):
                asyncio.run(partitions[i % 2].generate(f"extra-{i}", "ec-p256"))
                store.module.reinitialize()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
    threads.append(threading.Thread(target=churn))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)

    assert errors == []
    assert verified[0] == 6 * 60
