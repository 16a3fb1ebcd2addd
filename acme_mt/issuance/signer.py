"""Signing off the event loop: the one place where a builder meets a CA key.

Certificates (RFC 5280 §4), CRLs (RFC 5280 §5) and OCSP responses (RFC 6960
§4.2) are all built by pyca/cryptography builders whose ``sign`` calls the key's
own ``sign``. A key held on a PKCS#11 token blocks inside that call, so such a
signature runs in a worker thread (or a caller's executor), never on the event
loop. An elliptic-curve key that cryptography itself holds in memory (the file
key store's) signs in tens of microseconds without blocking, less than the
hand-off to a thread costs, so it signs in place. The hash follows the key:
SHA-384 for P-384, SHA-256 otherwise (RFC 5758 §3.2 pairs each curve with its
hash).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from acme_mt.keystores.base import SigningKey

logger = logging.getLogger(__name__)

T_co = TypeVar("T_co", covariant=True)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: The hashes CA keys sign with; every cryptography builder accepts these.
SignatureHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


class Signable(Protocol[T_co]):
    """Any cryptography builder that signs with a private key and a hash."""

    def sign(self, private_key: SigningKey, algorithm: SignatureHash) -> T_co: ...


def signature_hash(key: SigningKey | PublicKey) -> SignatureHash:
    """The hash a CA key signs with: SHA-384 for P-384, SHA-512 for P-521, else SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def signs_in_place(key: SigningKey) -> bool:
    """Whether ``key`` is one of cryptography's own in-memory EC keys.

    RSA keys stay off the loop even in memory: a 4096-bit signature takes
    milliseconds. Anything else (a PKCS#11 handle) may wait on a device.
    """
    return isinstance(key, ec.EllipticCurvePrivateKey) and type(key).__module__.startswith(
        "cryptography."
    )


async def sign(builder: Signable[T_co], key: SigningKey, executor: Executor | None = None) -> T_co:
    """Sign a builder; a key that may block signs in a worker thread, off the loop."""
    algorithm = signature_hash(key)
    if signs_in_place(key):
        return builder.sign(key, algorithm)
    if executor is None:
        return await asyncio.to_thread(builder.sign, key, algorithm)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, builder.sign, key, algorithm)
