-- Pre-signed OCSP responses (RFC 5019 §2.2), one per serial, kept so that
-- every process serving the tenant answers with the same bytes, and leases on
-- background jobs, so that one process does each periodic job. Times are
-- integer seconds since the epoch, UTC; stored_at is in microseconds, since
-- readers ask for what changed after it.
CREATE TABLE ocsp_responses (
    serial TEXT PRIMARY KEY,
    der BLOB NOT NULL,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    revoked INTEGER NOT NULL,
    stored_at INTEGER NOT NULL
);
CREATE INDEX ocsp_responses_stored_at ON ocsp_responses (stored_at);

CREATE TABLE job_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until INTEGER NOT NULL
);
