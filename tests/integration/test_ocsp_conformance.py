"""``openssl ocsp`` and curl as the relying party, lego as the subscriber
(RFC 6960, RFC 5019): ``conformance/ocsp.sh`` against a server of its own, at
two tenants, each checked against the other. lego answers http-01 itself, so
the server validates on a port nothing else in the session listens on."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.dns_server import LoopbackDnsServer
from tests.support.live import LiveServer, free_port, running_server
from tests.support.scripts import run_script as run_script_in_session

REPO = Path(__file__).resolve().parents[2]
OCSP_SCRIPT = REPO / "conformance" / "ocsp.sh"
TENANTS = ("ocsp-conf-a", "ocsp-conf-b")
ITEMS = ("POST good", "GET good", "isolation", "unknown and malformed", "revoked")
RUN_TIMEOUT_SECONDS = 300

pytestmark = pytest.mark.conformance


@dataclass(frozen=True)
class Target:
    """A live server with two EAB tenants, and the port its http-01 validation dials."""

    server: LiveServer
    http01_port: int


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDnsServer, tlsalpn_port: int
) -> Iterator[Target]:
    for tool in ("lego", "openssl", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is needed (apt-get install {tool})")
    http01_port = free_port()
    data_dir = tmp_path_factory.mktemp("acme-mt-ocsp-conformance")
    for server in running_server(data_dir, dns_server.resolver_address, http01_port, tlsalpn_port):
        for slug in TENANTS:
            server.create_tenant(slug)
        yield Target(server, http01_port)


def run_script(env: dict[str, str]) -> tuple[int, str]:
    return run_script_in_session(OCSP_SCRIPT, env, RUN_TIMEOUT_SECONDS)


@pytest.mark.parametrize("index", [0, 1])
def test_ocsp_script_passes_every_check_at_each_tenant(
    target: Target, index: int, tmp_path: Path
) -> None:
    server = target.server
    tenant, other = TENANTS[index], TENANTS[1 - index]
    eab_command = f"{sys.executable} -m acme_mt eab create --json --data-dir {server.data_dir}"
    env = {
        **server.env,
        "PYTHON": sys.executable,
        "CONFORMANCE_SERVER_URL": server.https_url,
        "CONFORMANCE_HTTP_URL": f"http://127.0.0.1:{server.http_port}",
        "CONFORMANCE_TENANT": tenant,
        "CONFORMANCE_OTHER_TENANT": other,
        "CONFORMANCE_HTTP01_PORT": str(target.http01_port),
        "CONFORMANCE_EAB_COMMAND": eab_command,
        "CONFORMANCE_WORK_DIR": str(tmp_path / "work"),
    }

    status, output = run_script(env)

    assert status == 0, output[-8000:]
    passed = set((tmp_path / "work" / "results.txt").read_text().splitlines())
    assert passed == {f"PASS ocsp {tenant} {item}" for item in ITEMS}, output[-8000:]
