-- One tenant's ACME state (RFC 8555 §7.1) and its audit chain.
-- Times are integer seconds since the epoch, UTC; JSON columns hold text.

CREATE TABLE eab_keys (
    kid TEXT PRIMARY KEY,
    hmac_key BLOB NOT NULL,
    created INTEGER NOT NULL,
    account_id TEXT REFERENCES accounts (id),
    revoked INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    thumbprint TEXT NOT NULL UNIQUE,
    jwk TEXT NOT NULL,
    status TEXT NOT NULL,
    contact TEXT NOT NULL,
    created INTEGER NOT NULL,
    eab_kid TEXT REFERENCES eab_keys (kid)
);

-- An EAB key binds one account at most (RFC 8555 §7.3.4).
CREATE UNIQUE INDEX accounts_eab_kid ON accounts (eab_kid) WHERE eab_kid IS NOT NULL;

CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    status TEXT NOT NULL,
    identifiers TEXT NOT NULL,
    expires INTEGER NOT NULL,
    created INTEGER NOT NULL,
    not_before INTEGER,
    not_after INTEGER,
    error TEXT,
    certificate_serial TEXT,
    profile TEXT,
    replaces TEXT
);

CREATE INDEX orders_account ON orders (account_id, created);

CREATE INDEX orders_processing ON orders (status) WHERE status = 'processing';

CREATE TABLE authorizations (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    identifier_type TEXT NOT NULL,
    identifier_value TEXT NOT NULL,
    wildcard INTEGER NOT NULL,
    status TEXT NOT NULL,
    expires INTEGER NOT NULL,
    created INTEGER NOT NULL
);

CREATE INDEX authorizations_account_identifier
    ON authorizations (account_id, identifier_type, identifier_value);

CREATE TABLE order_authorizations (
    order_id TEXT NOT NULL REFERENCES orders (id),
    authorization_id TEXT NOT NULL REFERENCES authorizations (id),
    position INTEGER NOT NULL,
    PRIMARY KEY (order_id, position)
);

CREATE TABLE challenges (
    id TEXT PRIMARY KEY,
    authorization_id TEXT NOT NULL REFERENCES authorizations (id),
    position INTEGER NOT NULL,
    type TEXT NOT NULL,
    token TEXT NOT NULL,
    status TEXT NOT NULL,
    validated INTEGER,
    error TEXT
);

CREATE INDEX challenges_authorization ON challenges (authorization_id, position);

CREATE TABLE certificates (
    serial TEXT PRIMARY KEY,
    account_id TEXT REFERENCES accounts (id),
    order_id TEXT REFERENCES orders (id),
    status TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after INTEGER NOT NULL,
    created INTEGER NOT NULL,
    der BLOB,
    revoked_at INTEGER,
    revocation_reason INTEGER,
    shard INTEGER NOT NULL DEFAULT 0,
    channel TEXT NOT NULL
);

CREATE INDEX certificates_status_shard ON certificates (status, shard, not_after);

CREATE INDEX certificates_order ON certificates (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
