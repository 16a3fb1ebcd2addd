"""certbot and lego against the ACME extensions of a live server.

Each test runs ``conformance/extensions.sh`` for one extension, which makes two
EAB tenants of its own and checks with the clients' own behaviour and
``openssl``: certificate profiles (draft-ietf-acme-profiles) through certbot's
``--preferred-profile`` and an EAB key limited to one profile; renewal
information (RFC 9773) through ``certbot renew`` before and after the server
moves the window; IP identifiers (RFC 8738) through lego and certbot's
``--ip-address``. The clients answer http-01 themselves, so this module starts
its own server whose challenge ports nothing else listens on.
"""

from __future__ import annotations

import re
import shlex
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

REPO = Path(__file__).resolve().parents[2]
EXTENSIONS_SCRIPT = REPO / "conformance" / "extensions.sh"

#: What each run must report, as (client, item); the tenant in each line is the script's own.
EXPECTED = {
    "profiles": {
        ("certbot", "profile-short"),
        ("certbot", "profile-default"),
        ("certbot", "profile-eab-limit"),
    },
    "ari": {
        ("certbot", "ari-not-due"),
        ("certbot", "ari-retry-after"),
        ("certbot", "ari-renew-early"),
        ("certbot", "ari-new-window"),
    },
    "ip": {("certbot", "ip")},
}

#: Each client step has its own limit in the script; this one only stops a hung run.
RUN_TIMEOUT_SECONDS = 600

#: The server's answer when an EAB-bound account orders an IP identifier: the binding
#: check refuses every non-dns identifier, even for a key without allowed suffixes.

RESULT_LINE = re.compile(r"^(PASS|LIMIT) (\S+) (\S+) (\S+)$", re.MULTILINE)

pytestmark = pytest.mark.conformance


@dataclass(frozen=True)
class ExtensionTarget:
    """A live server, the http-01 port its validator dials, and the admin command for it."""

    server: LiveServer
    http01_port: int

    @property
    def admin_command(self) -> str:
        data_dir = f"ACME_MT_SERVER_DATA_DIR={self.server.data_dir}"
        return shlex.join(["env", data_dir, sys.executable, "-m", "acme_mt"])


@pytest.fixture(scope="module")
def extension_target(
    tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDnsServer
) -> Iterator[ExtensionTarget]:
    http01_port, tlsalpn01_port = free_port(), free_port()
    data_dir = tmp_path_factory.mktemp("extensions-data")
    servers = cast(
        Generator[LiveServer, None, None],
        running_server(data_dir, dns_server.resolver_address, http01_port, tlsalpn01_port),
    )
    server = next(servers)
    try:
        yield ExtensionTarget(server, http01_port)
    finally:
        servers.close()


def program(name: str) -> str | None:
    """certbot from this virtual environment or the PATH; lego from the PATH."""
    beside_python = Path(sys.executable).parent / name
    if name == "certbot" and beside_python.exists():
        return str(beside_python)
    return shutil.which(name)


def run_extensions(env: dict[str, str]) -> tuple[int, str]:
    return run_script_in_session(EXTENSIONS_SCRIPT, env, RUN_TIMEOUT_SECONDS)


@pytest.mark.parametrize("extension", sorted(EXPECTED))
def test_clients_use_extension(
    extension: str, extension_target: ExtensionTarget, tmp_path: Path
) -> None:
    certbot, lego = program("certbot"), program("lego")
    if certbot is None:
        pytest.skip("certbot is not installed (.[test])")
    if extension == "ip" and lego is None:
        pytest.skip("lego is not installed (apt-get install lego)")
    server = extension_target.server
    env = {
        **server.env,
        "PYTHON": sys.executable,
        "CERTBOT": certbot,
        "LEGO": lego or "lego",
        "CONFORMANCE_SERVER_URL": server.https_url,
        "CONFORMANCE_HTTP_URL": server.http_url,
        "CONFORMANCE_HTTP01_PORT": str(extension_target.http01_port),
        "CONFORMANCE_ACME_MT": extension_target.admin_command,
        "CONFORMANCE_EXTENSIONS": extension,
        "CONFORMANCE_WORK_DIR": str(tmp_path),
    }

    status, output = run_extensions(env)

    assert status == 0, output[-8000:]
    reported = {(m[0], m[1], m[3]) for m in RESULT_LINE.findall(output)}
    expected = {("PASS", client, item) for client, item in EXPECTED[extension]}
    if extension == "ip":
        # lego 4.9.1 sends IP addresses as dns identifiers; lego 4.11+ orders them as ip.
        lego_outcomes = {("PASS", "lego", "ip"), ("LIMIT", "lego", "ip")}
        assert len(reported & lego_outcomes) == 1, output[-8000:]
        reported -= lego_outcomes
    assert reported == expected, output[-8000:]
