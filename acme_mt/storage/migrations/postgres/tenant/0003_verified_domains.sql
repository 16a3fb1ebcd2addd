-- Domains a tenant has proven by a DNS TXT record, for pre-validated EAB
-- accounts. Same tenant_id rule and policy as every tenant table.

CREATE TABLE verified_domains (
    tenant_id tenant_ref NOT NULL,
    domain text PRIMARY KEY,
    token text NOT NULL,
    requested timestamptz NOT NULL,
    verified timestamptz
);

ALTER TABLE verified_domains ENABLE ROW LEVEL SECURITY;
ALTER TABLE verified_domains FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON verified_domains
    USING (tenant_id = current_setting('acme_mt.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('acme_mt.tenant_id', true));

GRANT SELECT, INSERT, UPDATE ON verified_domains TO :"app_role";
