-- Delegated OCSP signing certificates of the tenant's CA (RFC 6960 §4.2.2.2),
-- kept so that a restart reuses the current one; the key stays in the tenant's
-- key partition under key_label. Same tenant_id rule and policy as every table.

CREATE TABLE ocsp_signers (
    tenant_id tenant_ref NOT NULL,
    key_label text PRIMARY KEY,
    certificate bytea NOT NULL,
    not_after timestamptz NOT NULL,
    created timestamptz NOT NULL
);

ALTER TABLE ocsp_signers ENABLE ROW LEVEL SECURITY;
ALTER TABLE ocsp_signers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON ocsp_signers
    USING (tenant_id = current_setting('acme_mt.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('acme_mt.tenant_id', true));

GRANT SELECT, INSERT ON ocsp_signers TO :"app_role";
