"""lego and certbot, the real ACME clients (RFC 8555), against a live server with two tenants.

Each test runs ``conformance/run_acme.sh`` for one client: at both tenants,
each with its own external account binding (§7.3.4), it obtains certificates
over every challenge the client offers (http-01 §8.3, dns-01 §8.4, and for lego
tls-alpn-01, RFC 8737), renews and revokes (§7.6), and checks each chain with
``openssl verify``: good through the tenant's own CA, refused through the other
tenant's. The clients themselves answer challenges, so this module starts its
own server whose http-01 and tls-alpn-01 ports nothing else listens on.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from conformance.dns_server import LoopbackDnsServer
from tests.support.live import LiveServer, free_port, running_server
from tests.support.scripts import run_script as run_script_in_session
from tests.support.softhsm import SOFTHSM_MODULE, write_softhsm_conf

REPO = Path(__file__).resolve().parents[2]
RUN_ACME = REPO / "conformance" / "run_acme.sh"
TENANTS = ("conf-alpha", "conf-beta")

#: What each client proves at each tenant; the script prints one PASS line per item.
COMBINATIONS = {
    "lego": ("http-01", "tls-alpn-01", "dns-01", "renew", "revoke"),
    "certbot": ("http-01", "dns-01", "renew", "revoke"),
}

#: Each client step has its own limit in the script; this one only stops a hung run.
RUN_TIMEOUT_SECONDS = 900

pytestmark = pytest.mark.conformance


@dataclass(frozen=True)
class ConformanceTarget:
    """A live server and the challenge ports its validator dials, which the clients serve."""

    server: LiveServer
    http01_port: int
    tlsalpn01_port: int


@pytest.fixture(scope="module", params=["sqlite", "postgres", "pkcs11"])
def conformance_target(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: LoopbackDnsServer,
) -> Iterator[ConformanceTarget]:
    """A server on the embedded defaults, one on PostgreSQL, one with CA keys on SoftHSM2."""
    http01_port, tlsalpn01_port = free_port(), free_port()
    data_dir = tmp_path_factory.mktemp(f"conformance-{request.param}")
    extra_env: dict[str, str] = {}
    if request.param == "postgres":
        cluster = request.getfixturevalue("postgres_cluster")
        extra_env = {
            "ACME_MT_STORE_BACKEND": "postgres",
            "ACME_MT_STORE_DSN": cluster.fresh_database("conformance"),
            "ACME_MT_STORE_SECRETS_FILE": str(cluster.secrets_file),
        }
    if request.param == "pkcs11":
        if not Path(SOFTHSM_MODULE).exists():
            pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
        hsm = write_softhsm_conf(tmp_path_factory.mktemp("conformance-softhsm"))
        extra_env = {
            **hsm.env,
            "ACME_MT_KEYSTORE_BACKEND": "pkcs11",
            "ACME_MT_KEYSTORE_MODULE": hsm.module,
        }
    # A generator underneath: close() stops the server even when tenant set-up fails.
    servers = cast(
        Generator[LiveServer, None, None],
        running_server(
            data_dir, dns_server.resolver_address, http01_port, tlsalpn01_port, extra_env
        ),
    )
    server = next(servers)
    try:
        for slug in TENANTS:
            server.create_tenant(slug)
        yield ConformanceTarget(server, http01_port, tlsalpn01_port)
    finally:
        servers.close()


def client_program(client: str) -> str | None:
    """certbot from this virtual environment or the PATH; lego from the PATH."""
    if client == "certbot":
        beside_python = Path(sys.executable).parent / "certbot"
        if beside_python.exists():
            return str(beside_python)
    return shutil.which(client)


def script_env(
    target: ConformanceTarget, dns_server: LoopbackDnsServer, records: Path, work: Path
) -> dict[str, str]:
    server = target.server
    eab_command = f"{sys.executable} -m acme_mt eab create --json --data-dir {server.data_dir}"
    return {
        **server.env,
        "PYTHON": sys.executable,
        "CONFORMANCE_SERVER_URL": server.https_url,
        "CONFORMANCE_HTTP_URL": server.http_url,
        "CONFORMANCE_TENANTS": " ".join(TENANTS),
        "CONFORMANCE_HTTP01_PORT": str(target.http01_port),
        "CONFORMANCE_TLSALPN01_PORT": str(target.tlsalpn01_port),
        "CONFORMANCE_DNS_RESOLVER": dns_server.resolver_address,
        "ACME_MT_TEST_DNS_RECORDS": str(records),
        "CONFORMANCE_EAB_COMMAND": eab_command,
        "CONFORMANCE_WORK_DIR": str(work),
    }


def run_script(env: dict[str, str]) -> tuple[int, str]:
    return run_script_in_session(RUN_ACME, env, RUN_TIMEOUT_SECONDS)


@pytest.mark.parametrize("client", sorted(COMBINATIONS))
def test_client_obtains_renews_and_revokes_at_two_tenants(
    client: str,
    conformance_target: ConformanceTarget,
    dns_server: LoopbackDnsServer,
    dns_records: Path,
    tmp_path: Path,
) -> None:
    program = client_program(client)
    if program is None:
        pytest.skip(f"{client} is not installed (lego: apt-get install lego; certbot: .[test])")
    env = script_env(conformance_target, dns_server, dns_records, tmp_path)
    env["CONFORMANCE_CLIENTS"] = client
    env[client.upper()] = program

    status, output = run_script(env)

    assert status == 0, output[-8000:]
    passed = {line for line in output.splitlines() if line.startswith("PASS ")}
    expected = {
        f"PASS {client} {tenant} {item}" for tenant in TENANTS for item in COMBINATIONS[client]
    }
    assert passed == expected, output[-8000:]
