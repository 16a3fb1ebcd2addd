"""A SQLite file's writes on the loop: lock waits, rollbacks and checkpoints."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from acme_mt.errors import TenantUnavailable
from acme_mt.storage import sqlite_db
from acme_mt.storage.sqlite_db import SqliteDatabase


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = await SqliteDatabase.open(tmp_path / "file.sqlite3", "registry")
    await database.write(lambda conn: conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    yield database
    await database.close()


def _insert(key: str) -> Callable[[sqlite3.Connection], None]:
    def body(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))

    return body


async def _keys(db: SqliteDatabase) -> list[str]:
    return [row["k"] for row in await db.query("SELECT k FROM t ORDER BY k")]


async def test_a_write_waits_on_the_loop_while_another_connection_holds_the_lock(
    db: SqliteDatabase,
) -> None:
    other = sqlite3.connect(db.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(db.write(_insert("late")))
        for _ in range(10):
            await asyncio.sleep(0.005)
        assert not write.done()
        other.execute("COMMIT")
        await asyncio.wait_for(write, 5)
    finally:
        other.close()
    assert await _keys(db) == ["late"]


async def test_a_lock_held_past_the_timeout_makes_the_tenant_unavailable(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_db, "BUSY_TIMEOUT_MS", 30)
    other = sqlite3.connect(db.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(TenantUnavailable):
            await db.write(_insert("refused"))
        other.execute("ROLLBACK")
    finally:
        other.close()
    await db.write(_insert("after"))
    assert await _keys(db) == ["after"]


async def test_a_failing_write_leaves_nothing_and_the_next_one_commits(db: SqliteDatabase) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (k) VALUES ('half')")
        raise ValueError("stopped half-way")

    with pytest.raises(ValueError, match="half-way"):
        await db.write(broken)
    await db.write(_insert("whole"))
    assert await _keys(db) == ["whole"]


async def test_the_log_is_copied_into_the_file_by_checkpoints_off_the_loop(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_db, "CHECKPOINT_EVERY", 3)
    writer = db._writer
    assert writer is not None
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    loop_statements: list[str] = []
    writer.set_trace_callback(loop_statements.append)

    for key in ("a", "b", "c"):
        await db.write(_insert(key))
    if db._checkpoint is not None:
        await db._checkpoint

    # An immutable open reads the main file alone, without the log.
    main_file = sqlite3.connect(f"file:{db.path}?immutable=1", uri=True)
    try:
        on_disk = [row[0] for row in main_file.execute("SELECT k FROM t ORDER BY k")]
    finally:
        main_file.close()
    assert on_disk == ["a", "b", "c"]
    assert not any("checkpoint" in statement for statement in loop_statements)
