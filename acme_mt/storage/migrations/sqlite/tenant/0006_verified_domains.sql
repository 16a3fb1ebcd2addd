-- Domains a tenant has proven by a DNS TXT record, for pre-validated EAB accounts.
CREATE TABLE verified_domains (
    domain TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    requested INTEGER NOT NULL,
    verified INTEGER
);
