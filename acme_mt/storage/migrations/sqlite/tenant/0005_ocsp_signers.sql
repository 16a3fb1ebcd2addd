-- Delegated OCSP signing certificates of the tenant's CA (RFC 6960 §4.2.2.2),
-- kept so that a restart reuses the current one. The key stays in the tenant's
-- key partition under key_label; times are integer seconds since the epoch, UTC.
CREATE TABLE ocsp_signers (
    key_label TEXT PRIMARY KEY,
    certificate BLOB NOT NULL,
    not_after INTEGER NOT NULL,
    created INTEGER NOT NULL
);
