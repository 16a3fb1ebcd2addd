"""The key store contract: generate, fetch and destroy signing keys per partition.

A partition is one tenant's keys (a directory for the file store, a PKCS#11
token for the HSM store) or the provider's own. Keys come back as objects that
pyca/cryptography's certificate, CRL and OCSP builders accept as signing keys,
so every X.509 structure is built by cryptography while the private key may stay
on a token. Only ``acme_mt.issuance`` calls ``sign`` on them, and always off the
event loop, because a token's ``sign`` blocks.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from acme_mt.errors import ConfigError

#: What a key store hands out: a private-key object the builders can sign with.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

PROVIDER_PARTITION = "_provider"


def parse_key_type(key_type: str) -> tuple[str, int | str]:
    """Split ``ec-p256`` into ``("ec", "secp256r1")`` and ``rsa-2048`` into ``("rsa", 2048)``."""
    kind, _, size = key_type.partition("-")
    if kind == "ec" and size in ("p256", "p384"):
        return "ec", {"p256": "secp256r1", "p384": "secp384r1"}[size]
    if kind == "rsa" and size in ("2048", "3072", "4096"):
        return "rsa", int(size)
    raise ConfigError(f"unsupported key type {key_type!r}")


class KeyPartition(Protocol):
    """One tenant's (or the provider's) keys."""

    name: str

    async def generate(self, label: str, key_type: str) -> SigningKey:
        """Make a new key where it will live and return a handle that can sign.

        :raises acme_mt.errors.KeyStoreError: the label exists or the store failed.
        """
        ...

    async def get(self, label: str) -> SigningKey:
        """Return a signing handle for an existing key.

        :raises acme_mt.errors.KeyStoreError: no such key, or the partition is unusable.
        """
        ...

    async def destroy(self, label: str) -> None:
        """Destroy a key so nothing can sign with it again."""
        ...


class KeyStore(Protocol):
    """A back end holding one partition per tenant plus the provider's."""

    async def open_partition(self, name: str, *, create: bool = False) -> KeyPartition:
        """Return the partition ``name``, creating it when ``create`` is true.

        :raises acme_mt.errors.KeyStoreError: it does not exist or cannot be opened.
        """
        ...

    async def release_partition(self, name: str) -> None:
        """Destroy every key of a partition and give it up (offboarding)."""
        ...

    async def close(self) -> None:
        """Close sessions and files; called once when the server stops."""
        ...
