"""A real acme-mt server in a subprocess, with the loopback helpers its tests need:
a test DNS server and an http-01 responder that tests fill with key authorizations."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parents[2]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port no earlier call returned.

    The kernel may give a closed port out again at once, so two calls in a row can agree;
    a server and the challenge responder beside it would then fight over one port.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class Http01Responder:
    """Serves ``/.well-known/acme-challenge/<token>`` from a dict, in its own thread."""

    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before answering a token in ``slow_tokens``.
    delay: float = 0.0
    slow_tokens: set[str] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()

        async def answer(request: web.Request) -> web.Response:
            token = request.match_info["token"]
            if token in self.slow_tokens:
                await asyncio.sleep(self.delay)
            value = self.tokens.get(token)
            if value is None:
                return web.Response(status=404)
            return web.Response(text=value)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_get("/.well-known/acme-challenge/{token}", answer)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class LiveServer:
    """A running ``acme-mt serve`` and how to reach it."""

    data_dir: Path
    https_port: int
    http_port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}"

    def directory_url(self, slug: str) -> str:
        return f"{self.https_url}/{slug}/acme/directory"

    @property
    def root_pem_path(self) -> Path:
        return self.data_dir / "root-download.pem"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root_pem_path))

    def start(self) -> None:
        self.log_path = self.data_dir / "server.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "acme_mt", "serve", "--data-dir", str(self.data_dir)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/root.pem", timeout=2) as resp:
                    self.root_pem_path.write_bytes(resp.read())
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def processes(self) -> list[int]:
        """The server's process and every process under it (its workers), Linux only."""
        assert self.process is not None
        return process_tree(self.process.pid)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``acme-mt`` on the same data directory as the server."""
        return subprocess.run(
            [sys.executable, "-m", "acme_mt", *args, "--data-dir", str(self.data_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def create_tenant(self, slug: str, policy: str | None = None) -> dict[str, Any]:
        extra: list[str] = []
        if policy is not None:
            path = self.data_dir / f"{slug}-policy.toml"
            path.write_text(policy)
            extra = ["--policy", str(path)]
        result: dict[str, Any] = self.cli_json("tenant", "create", slug, *extra)
        return result

    def create_eab(self, slug: str) -> tuple[str, str]:
        body = self.cli_json("eab", "create", slug)
        return body["kid"], body["hmac_key"]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its living descendants, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[1])
    found = [pid]
    for member in found:
        found.extend(child for child, parent in parents.items() if parent == member)
    return found


def server_env(
    data_dir: Path,
    https_port: int,
    http_port: int,
    dns: str,
    http01_port: int,
    tlsalpn_port: int,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACME_MT_")}
    env.update(
        ACME_MT_SERVER_HTTPS_LISTEN=f"127.0.0.1:{https_port}",
        ACME_MT_SERVER_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        ACME_MT_SERVER_HTTPS_URL=f"https://localhost:{https_port}",
        ACME_MT_SERVER_HTTP_URL=f"http://localhost:{http_port}",
        ACME_MT_VALIDATION_DNS_RESOLVER=dns,
        ACME_MT_VALIDATION_HTTP01_PORT=str(http01_port),
        ACME_MT_VALIDATION_TLSALPN01_PORT=str(tlsalpn_port),
        ACME_MT_VALIDATION_TIMEOUT_SECONDS="5",
        # Two worker processes on any machine, so every live test crosses workers.
        ACME_MT_SERVER_WORKERS="2",
    )
    env.update(extra_env or {})
    return env


def running_server(
    data_dir: Path,
    dns: str,
    http01_port: int,
    tlsalpn_port: int,
    extra_env: dict[str, str] | None = None,
) -> Iterator[LiveServer]:
    """Start a server, yield it, stop it; the log is printed when start-up fails."""
    https_port, http_port = free_port(), free_port()
    env = server_env(data_dir, https_port, http_port, dns, http01_port, tlsalpn_port, extra_env)
    server = LiveServer(data_dir, https_port, http_port, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
