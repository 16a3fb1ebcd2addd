-- Pre-signed OCSP responses (RFC 5019 §2.2), one per serial, so that every
-- replica answers with the same bytes, and leases on background jobs, so that
-- one replica does each periodic job. stored_at comes from this server's
-- clock, the one every replica shares. Same tenant_id rule and policy as every
-- table.

CREATE TABLE ocsp_responses (
    tenant_id tenant_ref NOT NULL,
    serial text PRIMARY KEY,
    der bytea NOT NULL,
    this_update timestamptz NOT NULL,
    next_update timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    revoked boolean NOT NULL,
    stored_at timestamptz NOT NULL
);
CREATE INDEX ocsp_responses_stored_at ON ocsp_responses (stored_at);

ALTER TABLE ocsp_responses ENABLE ROW LEVEL SECURITY;
ALTER TABLE ocsp_responses FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON ocsp_responses
    USING (tenant_id = current_setting('acme_mt.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('acme_mt.tenant_id', true));

CREATE TABLE job_leases (
    tenant_id tenant_ref NOT NULL,
    name text PRIMARY KEY,
    holder text NOT NULL,
    until timestamptz NOT NULL
);

ALTER TABLE job_leases ENABLE ROW LEVEL SECURITY;
ALTER TABLE job_leases FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON job_leases
    USING (tenant_id = current_setting('acme_mt.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('acme_mt.tenant_id', true));

GRANT SELECT, INSERT, UPDATE ON ocsp_responses, job_leases TO :"app_role";
