"""One SQLite file as the SQLite stores use it: reads and writes on the event loop,
slow work on a thread of the file's own.

Files run in WAL mode so that another process (the command line writing an
EAB key or a tenant while the server runs, or the other worker processes of
the server) can write beside us. In WAL mode a read never waits and a commit
only appends pages to the log, without syncing: both take microseconds, less
than handing them to a thread and back, so they run on the loop. What can take
long runs on the file's thread instead: opening it and applying migrations,
checkpoints (which copy the log into the file and sync it; the loop's
connection never starts one), and reads that met a lock. While another
process holds the write lock, a write yields to the loop and tries again in
steps of tens of microseconds, rather than letting SQLite's busy handler
sleep whole milliseconds, ten times longer than another worker holds it.
Connections are in autocommit mode: every read ends its snapshot when it
returns, so reads see rows other processes committed, and every write is one
explicit ``BEGIN IMMEDIATE`` transaction that takes the write lock before it
reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from acme_mt.errors import Conflict, StoreError, TenantUnavailable
from acme_mt.storage.migrate import apply_sqlite_migrations

logger = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
#: Pauses between tries for a lock another process holds, the last repeated until
#: ``BUSY_TIMEOUT_MS`` has passed.
LOCK_PAUSES = (0.0001, 0.0003, 0.001)
#: Commits on the loop between two checkpoints on the file's thread (SQLite's own
#: automatic checkpoint comes after about 1,000 pages, a few hundred of our writes).
CHECKPOINT_EVERY = 200

_UNIQUE_CODES = frozenset({sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE})
#: SQLite's answers when another connection holds the lock wanted.
BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class NothingChanged(Exception):
    """Raised inside a write to roll it back (audit included) and return ``result``."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


class SqliteDatabase:
    """A SQLite file: a writer and a reader connection for the loop, a thread for slow work."""

    def __init__(
        self,
        path: Path,
        worker: _Worker,
        conn: sqlite3.Connection,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
    ) -> None:
        self.path = path
        self._worker = worker
        self._conn: sqlite3.Connection | None = conn
        self._writer: sqlite3.Connection | None = writer
        self._reader: sqlite3.Connection | None = reader
        self._commits = 0
        self._checkpoint: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: Path, kind: str) -> SqliteDatabase:
        """Open (creating if needed) the file at ``path`` and apply pending migrations."""
        worker = _Worker(f"sqlite-{kind}")
        try:
            conn = await worker.run(functools.partial(_connect, path, kind))
        except BaseException:
            worker.stop()
            raise
        try:
            writer = _connect_writer(path)
        except BaseException:
            await worker.run(conn.close)
            worker.stop()
            raise
        return cls(path, worker, conn, writer, _connect_reader(path))

    async def read(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one short read transaction (one snapshot).

        Reads run on the loop through a read-only connection: in WAL mode a reader
        never waits for the writer, and a read costs less than a hand-off to the
        file's thread. When SQLite says busy all the same (a checkpoint resetting
        the log), the read goes to the worker, which may wait.
        """
        reader = self._reader
        if reader is not None:
            try:
                return _guarded(functools.partial(_read, body), reader, self.path)
            except _ReaderBusy:
                pass
        return await self._submit(functools.partial(_waiting, functools.partial(_read, body)))

    async def query(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        """The rows of one SELECT, without an explicit transaction.

        A single statement in autocommit mode reads one snapshot of its own, so
        it needs no BEGIN and COMMIT around it: half the SQLite calls of
        :meth:`read`, on the hottest reads (an account per JWS, say).
        """
        reader = self._reader
        if reader is not None:
            try:
                return _guarded(functools.partial(_select, sql, params), reader, self.path)
            except _ReaderBusy:
                pass
        job = functools.partial(_waiting, functools.partial(_select, sql, params))
        return await self._submit(job)

    async def write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction on the loop's writer.

        Limitation: the commit's write to the log goes through the page cache on
        the loop; under heavy write-back pressure the kernel may stall it, and
        every tenant of this process with it. Handing a file's commits to its
        thread once their time grows would end that.

        Any exception rolls the whole transaction back; ``NothingChanged`` rolls
        it back too and returns its result. ``body`` runs without yielding, so
        no other write of this process comes between its statements.

        :raises acme_mt.errors.Conflict: a unique or primary key was taken.
        :raises acme_mt.errors.TenantUnavailable: the lock was not had within
            ``BUSY_TIMEOUT_MS``, or SQLite failed.
        """
        writer = await self._begin()
        result = _guarded(functools.partial(_finish_write, body), writer, self.path)
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._commits = 0
            self._start_checkpoint()
        return result

    async def _begin(self) -> sqlite3.Connection:
        """The writer, in a transaction holding the write lock; the loop runs while it waits."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        for pause in _pauses():
            writer = self._writer
            if writer is None:
                raise StoreError("the store is closed")
            if _guarded(_begin_immediate, writer, self.path):
                return writer
            if time.monotonic() > deadline:
                logger.warning("SQLite write lock on %s not had within the timeout", self.path)
                raise TenantUnavailable()
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close the connections and let the file's thread end; closing twice is harmless."""
        conn, self._conn = self._conn, None
        for attribute in ("_reader", "_writer"):
            loop_conn = getattr(self, attribute)
            setattr(self, attribute, None)
            if loop_conn is not None:
                loop_conn.close()
        if conn is None:
            return
        try:
            if self._checkpoint is not None:
                with contextlib.suppress(Exception):
                    await self._checkpoint
            await self._worker.run(conn.close)
        finally:
            self._worker.stop()

    def _start_checkpoint(self) -> None:
        """Copy the log into the file on the file's thread, where its syncs wait."""
        checkpoint = asyncio.ensure_future(self._submit(_checkpoint))
        self._checkpoint = checkpoint

        def done(future: asyncio.Future[None]) -> None:
            self._checkpoint = None
            if not future.cancelled() and future.exception() is not None:
                logger.warning("checkpoint of %s failed; the next one tries again", self.path)

        checkpoint.add_done_callback(done)

    async def _submit(self, job: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("the store is closed")
        return await self._worker.run(functools.partial(_guarded, job, conn, self.path))


class _Worker:
    """One thread that runs calls in order and answers each on its caller's loop.

    Lighter than a one-thread ``ThreadPoolExecutor``: a queue put to hand a call
    over and one ``call_soon_threadsafe`` to hand the outcome back, with no
    executor future between them. A call whose caller was cancelled before it
    started is skipped, as an executor would.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((call, future, loop))
        return future

    def stop(self) -> None:
        """Let the thread end once the calls already queued have run."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future, loop = item
            if future.cancelled():
                continue
            try:
                outcome: tuple[bool, Any] = (True, call())
            except BaseException as exc:
                outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, *outcome)


_Call = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Any], succeeded: bool, value: Any) -> None:
    if future.done():
        return
    if succeeded:
        future.set_result(value)
    else:
        future.set_exception(value)


def _connect(path: Path, kind: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        apply_sqlite_migrations(conn, kind)
        conn.execute("PRAGMA busy_timeout = 0")  # from now on, locks are waited for by _locked
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_writer(path: Path) -> sqlite3.Connection:
    """The loop's read-write connection: it never waits for a lock, never checkpoints."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        conn.close()
        raise
    return conn


class _ReaderBusy(Exception):
    """The loop-side reader met a lock; the read is retried on the worker."""


def _connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection used on the event loop; it never waits for a lock."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("PRAGMA query_only = 1")
    return conn


def _guarded(job: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection, path: Path) -> T:
    """Turn SQLite's exceptions into the store's domain errors."""
    try:
        return job(conn)
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode in BUSY_CODES and _is_reader(conn):
            raise _ReaderBusy() from exc
        logger.warning("SQLite failure on %s: %s", path, exc)
        raise TenantUnavailable() from exc
    except sqlite3.IntegrityError as exc:
        if exc.sqlite_errorcode in _UNIQUE_CODES:
            raise Conflict("a record with this key exists already") from exc
        raise StoreError("the change breaks a rule of the store") from exc
    except sqlite3.ProgrammingError:
        raise
    except sqlite3.DatabaseError as exc:
        # Locked past busy_timeout, disk full, a damaged file: this store only.
        logger.warning("SQLite failure on %s: %s", path, exc)
        raise TenantUnavailable() from exc


def _is_reader(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("PRAGMA query_only").fetchone()[0])


def _select(sql: str, params: Sequence[object], conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


def _read(body: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    conn.execute("BEGIN")
    try:
        return body(conn)
    finally:
        _end(conn, "COMMIT")


def _waiting(job: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """``job`` on the worker's connection, tried again while another process holds a lock."""
    return _locked(lambda: job(conn))


def _begin_immediate(conn: sqlite3.Connection) -> bool:
    """Take the write lock; False when another connection holds it."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode in BUSY_CODES:
            return False
        raise
    return True


def _finish_write(body: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``body`` in the transaction just begun, then commit or roll back."""
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except NothingChanged as unchanged:
        _end(conn, "ROLLBACK")
        return unchanged.result  # type: ignore[no-any-return]
    except BaseException:
        _end(conn, "ROLLBACK")
        raise
    return result


def _checkpoint(conn: sqlite3.Connection) -> None:
    """A passive checkpoint: it copies what no reader still needs and waits for nobody."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _end(conn: sqlite3.Connection, statement: str) -> None:
    # SQLite rolls back by itself after some errors (a full disk, say).
    if conn.in_transaction:
        conn.execute(statement)


def _locked(attempt: Callable[[], T]) -> T:
    """Run ``attempt`` until it is not refused for a lock, for ``BUSY_TIMEOUT_MS`` at most.

    Only for the worker's connection, whose ``busy_timeout`` is 0: the pauses
    here are short, so a write waits about as long as the other process
    holds the lock.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    for pause in _pauses():
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode not in BUSY_CODES or time.monotonic() > deadline:
                raise
        time.sleep(pause)
    raise AssertionError("unreachable")


def _pauses() -> Iterator[float]:
    yield from LOCK_PAUSES
    while True:
        yield LOCK_PAUSES[-1]
