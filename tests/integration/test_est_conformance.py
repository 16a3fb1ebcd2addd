"""EST with curl and openssl as the client (RFC 7030, RFC 8951): ``conformance/est.sh``
against the live server, at two tenants, each checked against the other."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.support.live import LiveServer
from tests.support.scripts import run_script as run_script_in_session

REPO = Path(__file__).resolve().parents[2]
EST_SCRIPT = REPO / "conformance" / "est.sh"
TENANTS = ("est-conf-a", "est-conf-b")
ITEMS = ("cacerts", "csrattrs", "simpleenroll", "simplereenroll", "serverkeygen", "isolation")
RUN_TIMEOUT_SECONDS = 300

pytestmark = pytest.mark.conformance


@pytest.fixture(scope="module")
def tenants(live_server: LiveServer) -> tuple[str, str]:
    for slug in TENANTS:
        live_server.create_tenant(slug, 'key_types = ["ec-p256", "rsa-2048"]\n')
    return TENANTS


def run_est_script(env: dict[str, str]) -> tuple[int, str]:
    return run_script_in_session(EST_SCRIPT, env, RUN_TIMEOUT_SECONDS)


@pytest.mark.parametrize("index", [0, 1])
def test_est_script_passes_every_operation_at_each_tenant(
    live_server: LiveServer, tenants: tuple[str, str], index: int, tmp_path: Path
) -> None:
    if shutil.which("curl") is None or shutil.which("openssl") is None:
        pytest.skip("curl and openssl are needed (apt-get install curl openssl)")
    tenant, other = tenants[index], tenants[1 - index]
    credential_command = (
        f"{sys.executable} -m acme_mt est credential create --json"
        f" --data-dir {live_server.data_dir}"
    )
    env = {
        **live_server.env,
        "PYTHON": sys.executable,
        "CONFORMANCE_SERVER_URL": live_server.https_url,
        "CONFORMANCE_HTTP_URL": live_server.http_url,
        "CONFORMANCE_TENANT": tenant,
        "CONFORMANCE_OTHER_TENANT": other,
        "CONFORMANCE_EST_CREDENTIAL_COMMAND": credential_command,
        "CONFORMANCE_WORK_DIR": str(tmp_path / "work"),
    }

    status, output = run_est_script(env)

    assert status == 0, output[-8000:]
    passed = set((tmp_path / "work" / "results.txt").read_text().splitlines())
    assert passed == {f"PASS est {tenant} {item}" for item in ITEMS}, output[-8000:]
