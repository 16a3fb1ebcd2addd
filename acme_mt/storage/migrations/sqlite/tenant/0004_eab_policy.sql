-- EAB keys carry a policy: allowed suffixes and profiles, expiry, how many accounts they bind.
ALTER TABLE eab_keys ADD COLUMN policy TEXT;
-- A reusable key binds several accounts, so the binding is no longer unique per key.
DROP INDEX accounts_eab_kid;
CREATE INDEX accounts_eab_kid ON accounts (eab_kid) WHERE eab_kid IS NOT NULL;
