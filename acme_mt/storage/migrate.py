"""Versioned SQL migrations: plain files applied once each, in order.

Migrations live in ``migrations/<dialect>/<kind>/NNNN_description.sql`` beside
this module, where ``kind`` is ``tenant`` or ``registry``. Each database records
the versions it has applied in a ``schema_migrations`` table, so opening a store
applies only what is pending. A migration is never edited once released; a
change to the schema is a new file with the next number.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One schema change, identified by its version number."""

    version: int
    name: str
    sql: str


def load_migrations(dialect: str, kind: str) -> list[Migration]:
    """Read the migrations of one dialect and kind, in version order.

    :raises ValueError: a file name does not follow ``NNNN_description.sql``,
        or two files share a version.
    """
    directory = MIGRATIONS_DIR / dialect / kind
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not NNNN_description.sql")
        version = int(match.group(1))
        if version in migrations:
            raise ValueError(f"migration version {version} appears twice in {directory}")
        migrations[version] = Migration(version, match.group(2), path.read_text())
    return [migrations[v] for v in sorted(migrations)]


def split_sqlite_statements(script: str) -> list[str]:
    """Cut a script into complete statements, as SQLite's own parser sees them.

    ``sqlite3.executescript`` would commit the surrounding transaction, so the
    runner executes statement by statement instead.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not _only_comments(pending):
        raise ValueError("migration ends with an incomplete statement")
    return statements


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


def apply_sqlite_migrations(conn: sqlite3.Connection, kind: str) -> list[int]:
    """Apply every pending migration of ``kind`` and return the versions applied.

    Each migration runs in its own ``BEGIN IMMEDIATE`` transaction and checks the
    recorded versions after taking the write lock, so two processes opening the
    same new file apply each migration exactly once. The connection must be in
    autocommit mode (``isolation_level=None``).
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied INTEGER NOT NULL)"
    )
    applied: list[int] = []
    for migration in load_migrations("sqlite", kind):
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            ).fetchall()
            if not done:
                for statement in split_sqlite_statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied) VALUES (?, ?, ?)",
                    (migration.version, migration.name, int(time.time())),
                )
                applied.append(migration.version)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if applied:
        logger.debug("applied %s migrations %s", kind, applied)
    return applied
