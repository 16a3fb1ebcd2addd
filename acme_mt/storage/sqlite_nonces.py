"""The spent set of signed nonces, in a small SQLite file per tenant.

Worker processes of one embedded server redeem each other's nonces, so the set
of nonces already taken must be one they all see. Each tenant's set is a file
of its own, so a tenant flooding it delays no other tenant's redemptions. A
redemption is one INSERT on a primary key, run on the event loop: in WAL mode
without syncing it takes microseconds, which costs less than handing it to a
thread. While another process holds the file's write lock, the redemption
yields to the loop and tries again, rather than letting SQLite sleep on it.
The file is not synced: the rows matter only while the key that signed their
nonces lives, and that key is made afresh each time the server starts.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import NoReturn

from acme_mt.errors import TenantUnavailable
from acme_mt.storage.sqlite_db import BUSY_CODES

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0
#: How long a redemption waits for another process's write lock.
LOCK_TIMEOUT_SECONDS = 2.0
LOCK_PAUSE_SECONDS = 0.0001


class SqliteSpentNonces:
    """One tenant's spent set, opened on first use."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._swept = 0.0

    async def spend(self, nonce_id: bytes, expires: int) -> bool:
        """Record the nonce; False when some process recorded it first.

        :raises TenantUnavailable: the file cannot be opened or written.
        """
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        while True:
            try:
                return self._insert(nonce_id, expires)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in BUSY_CODES or time.monotonic() > deadline:
                    self._unavailable(exc)
            except (sqlite3.Error, OSError) as exc:
                self._unavailable(exc)
            await asyncio.sleep(LOCK_PAUSE_SECONDS)

    def _insert(self, nonce_id: bytes, expires: int) -> bool:
        conn = self._conn or self._open()
        if time.monotonic() - self._swept > SWEEP_SECONDS:
            conn.execute("DELETE FROM spent WHERE expires < ?", (int(time.time()),))
            self._swept = time.monotonic()
        try:
            conn.execute("INSERT INTO spent (id, expires) VALUES (?, ?)", (nonce_id, expires))
        except sqlite3.IntegrityError:
            return False
        return True

    @staticmethod
    def _unavailable(exc: BaseException) -> NoReturn:
        logger.error("spent nonces unavailable: %s", exc.__class__.__name__)
        raise TenantUnavailable() from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> sqlite3.Connection:
        """Open (and on first use make) the file; a lock held elsewhere raises, to be retried."""
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS spent (id BLOB PRIMARY KEY, expires INTEGER NOT NULL)"
                " WITHOUT ROWID"
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn
