"""Several server processes behind the same listeners, under one supervisor.

One Python process serves from one core. ``acme-mt serve`` therefore starts a
supervisor that makes the provider root, the default tenant and the listener's
certificate once, binds both listening sockets, then starts ``[server]
workers`` processes (one for each CPU by default) that inherit them. Each
worker is a whole server accepting on the same sockets, so whichever worker is
free takes the next connection; a second server started on the same ports
fails to bind, as a single process would.

What the workers must agree on lives where all of them see it: rows in the
store; replay nonces signed with a key the supervisor hands each worker and a
spent set on disk (or the store's own nonces on PostgreSQL); job leases in the
store. Certificate events travel through the supervisor, so a revocation made
by one worker reaches every worker's OCSP responder and CRL publisher at once.

The supervisor talks to each worker over a socket pair, one JSON object a
line: to the worker first the nonce key and the numbers of the inherited
listening sockets, ``serve`` once every worker is ready, then the events of
other workers; from the worker ``ready`` once it could serve, then its
events. No worker accepts a connection before all are ready, so a server
that answers has all its workers. A worker that fails to start at first
stops the server, as one process would; a worker that dies later is
started again, with a growing pause while it keeps failing (its store
unreachable, say). A worker whose supervisor goes away stops.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from acme_mt.config import Settings, split_host_port
from acme_mt.errors import AcmeMtError
from acme_mt.events import Events

logger = logging.getLogger(__name__)

#: Names the inherited socket of a worker; set only by the supervisor.
LINK_FD_VARIABLE = "ACME_MT_INTERNAL_WORKER_FD"
AUTO_MAX_WORKERS = 8
STARTUP_SECONDS = 120.0
STOP_SECONDS = 20.0
LISTEN_BACKLOG = 1024
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
#: A worker that lived this long before dying is restarted without delay.
STEADY_SECONDS = 60.0


def worker_count(settings: Settings) -> int:
    """The ``[server] workers`` setting, or one per CPU this process may run on."""
    if settings.server.workers < 0:
        raise AcmeMtError("[server] workers must be 0 (one per CPU) or more")
    if settings.server.workers:
        return settings.server.workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, AUTO_MAX_WORKERS))


# The worker's side.


class WorkerLink:
    """A worker's line to its supervisor: the nonce key in, events both ways."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        nonce_key: bytes,
        listeners: dict[str, int],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.nonce_key = nonce_key
        #: The inherited listening sockets' descriptors, by name (``https``, ``http``).
        self.listeners = listeners

    @classmethod
    async def connect(cls, fd: int) -> WorkerLink:
        """Open the inherited socket and read the nonce key, the supervisor's first line."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        first = _parse(await reader.readline()) or {}
        try:
            key = base64.urlsafe_b64decode(str(first.get("nonce_key", "")))
        except ValueError:
            key = b""
        if len(key) < 32:
            raise AcmeMtError("the supervisor sent no nonce key")
        listeners = first.get("listeners")
        if not isinstance(listeners, dict) or not all(
            isinstance(v, int) for v in listeners.values()
        ):
            raise AcmeMtError("the supervisor sent no listening sockets")
        return cls(reader, writer, key, listeners)

    def relay(self, kind: str, tenant_id: str, serial: str) -> None:
        """Pass an event made here on to the other workers."""
        self._send({"event": kind, "tenant": tenant_id, "serial": serial})

    def ready(self) -> None:
        self._send({"ready": True})

    async def wait_to_serve(self, events: Events) -> bool:
        """Wait for the supervisor's word that every worker is ready; False if it went away.

        Events that arrive meanwhile are delivered.
        """
        try:
            while line := await self._reader.readline():
                message = _parse(line) or {}
                if message.get("serve") is True:
                    return True
                self._deliver(events, message)
        except (ConnectionError, OSError):
            pass
        return False

    async def listen(self, events: Events, stop: asyncio.Event) -> None:
        """Deliver the other workers' events until the supervisor goes away, then stop."""
        try:
            while line := await self._reader.readline():
                self._deliver(events, _parse(line) or {})
        except (ConnectionError, OSError):
            pass
        logger.warning("the supervisor went away; stopping")
        stop.set()

    @staticmethod
    def _deliver(events: Events, message: dict[str, object]) -> None:
        kind = message.get("event")
        if isinstance(kind, str):
            events.deliver(kind, str(message.get("tenant")), str(message.get("serial")))

    def close(self) -> None:
        self._writer.close()

    def _send(self, message: dict[str, object]) -> None:
        if not self._writer.is_closing():
            self._writer.write(json.dumps(message).encode() + b"\n")


def link_fd_from_environment() -> int | None:
    """The socket the supervisor gave this process, taken out of the environment."""
    value = os.environ.pop(LINK_FD_VARIABLE, None)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise AcmeMtError("the worker socket is not a number") from None


# The supervisor's side.


@dataclass
class _Worker:
    number: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0
    failures: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Supervisor:
    """Starts the workers, passes their events around, restarts any that die."""

    def __init__(self, command: list[str], count: int, listeners: dict[str, socket.socket]) -> None:
        self._command = command
        self._workers = [_Worker(number) for number in range(count)]
        self._listeners = dict(listeners)  # held, so their descriptors stay open
        self._nonce_key = secrets.token_bytes(32)
        self._stopping = False
        #: Set once every worker was ready and told to serve; later failures restart.
        self._serving = False
        self._failed: asyncio.Event = asyncio.Event()

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None]) -> None:
        """Serve until ``stop`` is set; fail when the workers cannot all start."""
        try:
            for worker in self._workers:
                await self._start(worker)
            await self._wait_ready()
            self._serving = True
            for worker in self._workers:
                self._tell_to_serve(worker)
            on_ready()
            await stop.wait()
        finally:
            await self._stop_all()

    async def _wait_ready(self) -> None:
        async def all_ready() -> None:
            for worker in self._workers:
                await worker.ready.wait()

        ready = asyncio.create_task(all_ready())
        failed = asyncio.create_task(self._failed.wait())
        try:
            await asyncio.wait(
                [ready, failed], timeout=STARTUP_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            failed.cancel()
            ready.cancel()
        if self._failed.is_set() or not all(worker.ready.is_set() for worker in self._workers):
            raise AcmeMtError("the server processes did not start; see the log above")

    async def _start(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, LINK_FD_VARIABLE: str(theirs.fileno())}
        listeners = {name: sock.fileno() for name, sock in self._listeners.items()}
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self._command, env=env, pass_fds=(theirs.fileno(), *listeners.values())
            )
        finally:
            theirs.close()
        worker.started = time.monotonic()
        worker.ready.clear()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker.writer = writer
        key = base64.urlsafe_b64encode(self._nonce_key).decode()
        first = {"nonce_key": key, "listeners": listeners}
        writer.write(json.dumps(first).encode() + b"\n")
        for job in (self._listen(worker, reader), self._watch(worker, worker.process)):
            task = asyncio.create_task(job)
            worker.tasks.add(task)
            task.add_done_callback(worker.tasks.discard)
        logger.info("started worker %d (pid %d)", worker.number, worker.process.pid)

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while line := await reader.readline():
                message = _parse(line)
                if message is None:
                    continue
                if message.get("ready") is True:
                    worker.ready.set()
                    if self._serving:  # a worker started again joins at once
                        self._tell_to_serve(worker)
                elif "event" in message:
                    self._broadcast(worker, line)

    @staticmethod
    def _tell_to_serve(worker: _Worker) -> None:
        if worker.writer is not None and not worker.writer.is_closing():
            worker.writer.write(b'{"serve": true}\n')

    def _broadcast(self, source: _Worker, line: bytes) -> None:
        for worker in self._workers:
            writer = worker.writer
            if worker is not source and writer is not None and not writer.is_closing():
                writer.write(line)

    async def _watch(self, worker: _Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if worker.writer is not None:
            worker.writer.close()
            worker.writer = None
        if self._stopping:
            return
        if not self._serving:
            logger.error("worker %d exited with %s before it served", worker.number, code)
            self._failed.set()
            return
        lived = time.monotonic() - worker.started
        steady = worker.ready.is_set() and lived > STEADY_SECONDS
        worker.failures = 0 if steady else worker.failures + 1
        delay = 0.0
        if worker.failures:
            delay = RESTART_BACKOFF[min(worker.failures, len(RESTART_BACKOFF)) - 1]
        logger.error(
            "worker %d exited with %s; starting it again in %g s", worker.number, code, delay
        )
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._start(worker)

    async def _stop_all(self) -> None:
        self._stopping = True
        running = [w.process for w in self._workers if w.process and w.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if running:
            await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in running], timeout=STOP_SECONDS
            )
            for process in running:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
        for worker in self._workers:
            for task in list(worker.tasks):
                task.cancel()
            if worker.writer is not None:
                worker.writer.close()


def listen(address: str, default_port: int) -> socket.socket:
    """A listening socket on ``HOST:PORT`` for the workers to share.

    :raises AcmeMtError: the address is taken or cannot be bound.
    """
    host, port = split_host_port(address, default_port)
    try:
        return socket.create_server((host, port), backlog=LISTEN_BACKLOG)
    except OSError as exc:
        raise AcmeMtError(f"cannot listen on {address}: {exc.strerror or exc}") from None


def worker_command(config: str | None, data_dir: str | None) -> list[str]:
    """How the supervisor starts a worker: ``serve`` again, on the same settings."""
    command = [sys.executable, "-m", "acme_mt", "serve"]
    if config:
        command += ["--config", config]
    if data_dir:
        command += ["--data-dir", data_dir]
    return command


def _parse(line: bytes) -> dict[str, object] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
