-- Per-tenant EST enrollment credentials (RFC 7030 §3.2.3, HTTP Basic).
-- The password is never stored: password_hash is "scrypt$N$r$p$salt$hash" (base64).
-- A revoked credential keeps its row, so its id and username are never reused.

CREATE TABLE est_credentials (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created INTEGER NOT NULL,
    revoked_at INTEGER
);
