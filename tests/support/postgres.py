"""A real PostgreSQL for the tests: the one in ``ACME_MT_TEST_DSN``, or a throwaway cluster.

Without ``ACME_MT_TEST_DSN`` the session starts its own cluster from the server
binaries (``initdb`` and ``pg_ctl`` on PATH or under /usr/lib/postgresql/*/bin)
on a free loopback port, with password (SCRAM) authentication over TCP, and
removes it afterwards. Run as root, the cluster runs as the ``postgres`` user,
which owns its data directory. Each test that needs a clean slate gets a
database of its own (``fresh_database``); the store roles are cluster-wide and
their passwords live in one secrets file per session.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from tests.support.live import free_port

T = TypeVar("T")

TEST_DSN_VARIABLE = "ACME_MT_TEST_DSN"


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end from synchronous code, even inside a running loop."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def find_binary(name: str) -> str | None:
    """A PostgreSQL server binary on PATH or in the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database), parts.query, ""))


@dataclass
class PostgresCluster:
    """A PostgreSQL server the tests may use as superuser."""

    dsn: str
    secrets_dir: Path
    data_dir: Path | None = None
    port: int = 0
    owned: bool = False
    durable: bool = False
    _databases: list[str] = field(default_factory=list)

    @property
    def secrets_file(self) -> Path:
        """The store-secrets file every test backend of this session shares."""
        return self.secrets_dir / "store-secrets.json"

    def fresh_database(self, prefix: str = "t") -> str:
        """Create an empty database and return the superuser DSN that names it."""
        name = f"{prefix}_{secrets.token_hex(6)}"

        async def create() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
            finally:
                await conn.close()

        run_async(create)
        self._databases.append(name)
        return with_database(self.dsn, name)

    def superuser(self, database_dsn: str) -> Callable[[], Awaitable[asyncpg.Connection]]:
        """A factory of superuser connections to one test database."""
        return lambda: asyncpg.connect(database_dsn)

    # The throwaway cluster's life.

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)

    def start(self) -> None:
        """Start the server (again) on its port and wait until it accepts connections."""
        assert self.data_dir is not None
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir}"
        options += " -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        pg_ctl = find_binary("pg_ctl")
        assert pg_ctl is not None
        log = self.data_dir / "server.log"
        self._run(pg_ctl, "-D", str(self.data_dir / "pgdata"), "-o", options, "-l", str(log),
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``immediate`` is what a crash looks like to clients."""
        assert self.data_dir is not None
        pg_ctl = find_binary("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data_dir / "pgdata"), "-m", mode, "-w", "stop")

    def close(self) -> None:
        """Stop and remove a throwaway cluster, or drop the databases made in an outside one."""
        if self.owned:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.stop()
            if self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)
        else:
            run_async(self._drop_databases)
        shutil.rmtree(self.secrets_dir, ignore_errors=True)

    async def _drop_databases(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            for name in self._databases:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def _scratch_dir(in_memory: bool) -> str | None:
    """Where a cluster's files go: /dev/shm for speed when asked and there, else the temp dir."""
    shm = Path("/dev/shm")
    if in_memory and shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm)
    return None


def start_throwaway_cluster(*, in_memory: bool = True, durable: bool = False) -> PostgresCluster:
    """initdb a new cluster in a temporary directory and start it on a free port.

    Test clusters live in memory where they can (DDL on a virtual disk is slow)
    and skip fsync; a benchmark asks for a disk and ``durable`` settings.

    :raises RuntimeError: the server binaries are not installed.
    """
    initdb = find_binary("initdb")
    if initdb is None or find_binary("pg_ctl") is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    base = Path(tempfile.mkdtemp(prefix="acme-mt-pg-", dir=_scratch_dir(in_memory)))
    base.chmod(0o755)
    password = secrets.token_urlsafe(18)
    password_file = base / "pw"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(password_file, "postgres", "postgres")
    cluster = PostgresCluster(
        dsn=f"postgresql://postgres:{quote(password)}@127.0.0.1:{{port}}/postgres",
        secrets_dir=Path(tempfile.mkdtemp(prefix="acme-mt-pg-secrets-")),
        data_dir=base,
        owned=True,
        durable=durable,
    )
    try:
        cluster._run(initdb, "-D", str(base / "pgdata"), "-U", "postgres", "-E", "UTF8",
                     "--auth-host=scram-sha-256", "--auth-local=trust",
                     f"--pwfile={password_file}")  # fmt: skip
        password_file.unlink()
        for _ in range(5):
            cluster.port = free_port()
            try:
                cluster.start()
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the throwaway PostgreSQL did not start")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    cluster.dsn = cluster.dsn.replace("{port}", str(cluster.port))
    return cluster


_session: PostgresCluster | None = None
_session_lock = threading.Lock()


def session_cluster() -> PostgresCluster:
    """The session's PostgreSQL, started on first use and removed when the session ends.

    Skips the calling test when there is neither a test DSN nor server binaries.
    """
    global _session
    with _session_lock:
        if _session is None:
            dsn = os.environ.get(TEST_DSN_VARIABLE)
            if dsn:
                _session = PostgresCluster(
                    dsn=dsn, secrets_dir=Path(tempfile.mkdtemp(prefix="acme-mt-pg-secrets-"))
                )
            else:
                try:
                    _session = start_throwaway_cluster()
                except RuntimeError as exc:
                    pytest.skip(str(exc))
            atexit.register(_session.close)
        return _session


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL (see ``session_cluster``)."""
    cluster = session_cluster()
    yield cluster
    global _session
    with _session_lock:
        if _session is cluster:
            atexit.unregister(cluster.close)
            cluster.close()
            _session = None


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A throwaway cluster for one test that stops and starts its server."""
    if os.environ.get(TEST_DSN_VARIABLE):
        pytest.skip("stopping the server needs a throwaway cluster, not ACME_MT_TEST_DSN")
    try:
        cluster = start_throwaway_cluster()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield cluster
    cluster.close()
