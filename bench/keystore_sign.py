#!/usr/bin/env python3
"""Signatures per second through the key stores, beside a bare python-pkcs11 loop.

For each key type, one process measures four loops in turn, round after
round, so that a busy machine slows all of them alike:

- bare: python-pkcs11 ``sign`` on a precomputed digest (ECDSA) or DigestInfo
  (RSA PKCS#1 v1.5, RFC 8017 §9.2), the token's own cost;
- raw: the partition's ``sign_raw`` on the same input, which adds the gate,
  the session lock and the key look-up;
- pkcs11 store: ``key.sign(message, ...)`` on the key the PKCS#11 key store
  returns, as cryptography's builders call it (hash, gate, lock, C_Sign, DER);
- file store: the same call on the file key store's in-memory key.

It prints the median rate of each loop per CPU second of the signing thread
(SoftHSM signs in the caller's thread, and CPU time stays put when other work
loads the machine) and per wall-clock second, the median per-round ratio of the
PKCS#11 store to the bare loop (CPU rates), and leaf certificates per CPU
second built and signed with an ec-p256 CA key on each store. SoftHSM2 runs
from a temporary token directory. Figures only; nothing passes or fails.

    bench/keystore_sign.py --seconds 1 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
MAX_CALLS = 10_000_000
MESSAGE = b"x" * 200  # about the size of a small to-be-signed structure


def rate(call: Callable[[], object], seconds: float) -> tuple[float, float]:
    """Calls per wall-clock second and per CPU second of this thread, over about ``seconds``.

    SoftHSM signs in the calling thread, so thread CPU time holds the whole
    cost of a call; unlike wall-clock time it hardly moves when other
    processes load the machine.
    """
    count = 0
    start, cpu_start = time.perf_counter(), time.thread_time()
    deadline = start + seconds
    while count < MAX_CALLS:
        for _ in range(16):
            call()
        count += 16
        if time.perf_counter() >= deadline:
            break
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    return count / wall, count / max(cpu, 1e-9)


def _hash_for(key_type: str) -> hashes.HashAlgorithm:
    return hashes.SHA384() if key_type == "ec-p384" else hashes.SHA256()


def store_call(key: Any, key_type: str) -> Callable[[], object]:
    """A signature as cryptography's builders ask for one."""
    algorithm = _hash_for(key_type)
    if key_type.startswith("ec"):
        return lambda: key.sign(MESSAGE, ec.ECDSA(algorithm))
    return lambda: key.sign(MESSAGE, padding.PKCS1v15(), algorithm)


def bare_call(store: Any, key: Any, key_type: str) -> Callable[[], object]:
    """python-pkcs11 alone, on a session of its own, signing what the adapter would send."""
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    token = store.module.find_token(key.info.token_label)
    session = token.open()  # the store's login covers this session too
    [raw] = session.get_objects(
        {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key.info.key_id}
    )
    assert isinstance(raw, pkcs11.PrivateKey)
    data, mechanism = _token_input(key_type)
    return lambda: raw.sign(data, mechanism=mechanism)


def _token_input(key_type: str) -> tuple[bytes, Any]:
    """What the adapter sends the token for MESSAGE, and the mechanism it uses."""
    from pkcs11 import Mechanism

    from acme_mt.keystores.pkcs11_keys import digest_info

    algorithm = _hash_for(key_type)
    digest = hashes.Hash(algorithm)
    digest.update(MESSAGE)
    value = digest.finalize()
    if key_type.startswith("ec"):
        return value, Mechanism.ECDSA
    return digest_info(algorithm, value), Mechanism.RSA_PKCS


def raw_call(key: Any, key_type: str) -> Callable[[], object]:
    """The partition's own C_Sign path, without hashing or DER encoding."""
    data, mechanism = _token_input(key_type)
    partition, info = key._signer, key.info
    return lambda: partition.sign_raw(info, data, mechanism)


def certificate_call(ca_key: Any) -> Callable[[], object]:
    """Build and sign one leaf certificate with ``ca_key``, as issuance does."""
    leaf = ec.generate_private_key(ec.SECP256R1()).public_key()
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf.example.test")])
    san = x509.SubjectAlternativeName([x509.DNSName("leaf.example.test")])

    def build() -> object:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(leaf)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=90))
            .add_extension(san, critical=False)
        )
        return builder.sign(ca_key, hashes.SHA256())

    return build


async def open_stores(work: Path, module: str, key_types: list[str]) -> tuple[Any, dict, dict]:
    """A PKCS#11 and a file key store, each with one key of every type."""
    from acme_mt.keystores.file import FileKeyStore
    from acme_mt.keystores.pkcs11 import Pkcs11KeyStore
    from acme_mt.keystores.secrets import PinStore

    token_dir = work / "tokens"
    token_dir.mkdir()
    conf = work / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {token_dir}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    hsm = Pkcs11KeyStore(module, PinStore(work / "data", {}))
    files = FileKeyStore(work / "keys", os.urandom(32))
    hsm_partition = await hsm.open_partition("bench", create=True)
    file_partition = await files.open_partition("bench", create=True)
    hsm_keys = {t: await hsm_partition.generate(t, t) for t in key_types}
    file_keys = {t: await file_partition.generate(t, t) for t in key_types}
    return hsm, hsm_keys, file_keys


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    hsm, hsm_keys, file_keys = asyncio.run(open_stores(work, args.module, args.key_types))
    loops: dict[str, dict[str, Callable[[], object]]] = {
        t: {
            "bare": bare_call(hsm, hsm_keys[t], t),
            "raw": raw_call(hsm_keys[t], t),
            "pkcs11": store_call(hsm_keys[t], t),
            "file": store_call(file_keys[t], t),
        }
        for t in args.key_types
    }
    certificates = {
        "pkcs11": certificate_call(hsm_keys["ec-p256"]),
        "file": certificate_call(file_keys["ec-p256"]),
    }
    wall: dict[str, dict[str, list[float]]] = {t: {k: [] for k in loops[t]} for t in loops}
    cpu: dict[str, dict[str, list[float]]] = {t: {k: [] for k in loops[t]} for t in loops}
    ratios: dict[str, list[float]] = {t: [] for t in loops}
    raw_ratios: dict[str, list[float]] = {t: [] for t in loops}
    cert_rates: dict[str, list[float]] = {k: [] for k in certificates}
    for _ in range(args.rounds):
        for key_type, calls in loops.items():
            seconds = args.seconds * (2 if key_type.startswith("rsa") else 1)
            for name, call in calls.items():
                per_wall, per_cpu = rate(call, seconds)
                wall[key_type][name].append(per_wall)
                cpu[key_type][name].append(per_cpu)
            bare = cpu[key_type]["bare"][-1]
            ratios[key_type].append(cpu[key_type]["pkcs11"][-1] / bare)
            raw_ratios[key_type].append(cpu[key_type]["raw"][-1] / bare)
        if "ec-p256" in loops:
            for name, call in certificates.items():
                cert_rates[name].append(rate(call, args.seconds)[1])

    def medians(table: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, int]]:
        return {
            t: {name: round(statistics.median(values)) for name, values in row.items()}
            for t, row in table.items()
        }

    return {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "os_locking": hsm.module.os_locking,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "signatures_per_cpu_second": medians(cpu),
        "signatures_per_wall_second": medians(wall),
        "ratio_pkcs11_to_bare": {t: round(statistics.median(v), 3) for t, v in ratios.items()},
        "ratio_raw_to_bare": {t: round(statistics.median(v), 3) for t, v in raw_ratios.items()},
        "ratio_range": {t: [round(min(v), 3), round(max(v), 3)] for t, v in ratios.items()},
        "leaf_certificates_per_cpu_second_ec_p256": {
            name: round(statistics.median(v)) for name, v in cert_rates.items() if v
        },
    }


def render(figures: dict[str, Any]) -> str:
    lines = [
        "signatures per CPU second (per wall-clock second in brackets)",
        f"{'key type':<9} {'bare python-pkcs11':>19} {'sign_raw':>15} {'pkcs11 store':>17} "
        f"{'raw/bare':>8} {'store/bare':>10} {'(min-max)':>10} {'file store':>16}",
    ]
    cpu, wall = figures["signatures_per_cpu_second"], figures["signatures_per_wall_second"]
    for key_type, row in cpu.items():
        low, high = figures["ratio_range"][key_type]
        cells = {name: f"{row[name]} ({wall[key_type][name]})" for name in row}
        lines.append(
            f"{key_type:<9} {cells['bare']:>19} {cells['raw']:>15} {cells['pkcs11']:>17} "
            f"{figures['ratio_raw_to_bare'][key_type]:>8.2f} "
            f"{figures['ratio_pkcs11_to_bare'][key_type]:>10.2f} {f'{low:.2f}-{high:.2f}':>10} "
            f"{cells['file']:>16}"
        )
    certs = figures["leaf_certificates_per_cpu_second_ec_p256"]
    if certs:
        lines.append(
            f"leaf certificates per CPU second, ec-p256 CA: pkcs11 store {certs['pkcs11']}, "
            f"file store {certs['file']}"
        )
    lines.append(
        f"rounds {figures['rounds']}, {figures['cpus']} CPUs, load average "
        f"{figures['load_average'][0]:.2f}, module locking {figures['os_locking']}"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default=DEFAULT_MODULE, help="PKCS#11 library (SoftHSM2)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per loop per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--key-types", nargs="+", default=list(KEY_TYPES), choices=KEY_TYPES)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    args.rounds = max(1, min(args.rounds, 100))
    args.seconds = max(0.1, min(args.seconds, 60.0))
    with tempfile.TemporaryDirectory(prefix="keystore-bench-") as work:
        figures = measure(args, Path(work))
    print(render(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
