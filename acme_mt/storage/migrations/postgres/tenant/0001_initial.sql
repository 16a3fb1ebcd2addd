-- One tenant's ACME state (RFC 8555 §7.1), its audit chain and its replay
-- nonces (§6.5), in the schema tenant_<id>. The runner fills in :'tenant_id'
-- (this schema's tenant) and :"app_role" (the application role).
--
-- Every table carries tenant_id, which must be this schema's tenant, and a
-- row-level security policy (ENABLE and FORCE, so the owner is bound too) that
-- shows and accepts only rows of the tenant named by the transaction's
-- acme_mt.tenant_id setting; with no setting nothing is visible.

CREATE DOMAIN tenant_ref AS text
    DEFAULT current_setting('acme_mt.tenant_id', true)
    CHECK (VALUE = :'tenant_id');

CREATE TABLE eab_keys (
    tenant_id tenant_ref NOT NULL,
    kid text PRIMARY KEY,
    hmac_key bytea NOT NULL,
    created timestamptz NOT NULL,
    account_id text,
    revoked boolean NOT NULL DEFAULT false,
    -- acme_mt.models.EabPolicy: suffixes, profiles, expiry, how many accounts it binds.
    policy jsonb
);

CREATE TABLE accounts (
    tenant_id tenant_ref NOT NULL,
    id text PRIMARY KEY,
    thumbprint text NOT NULL UNIQUE,
    jwk jsonb NOT NULL,
    status text NOT NULL,
    contact jsonb NOT NULL,
    created timestamptz NOT NULL,
    eab_kid text REFERENCES eab_keys (kid)
);

ALTER TABLE eab_keys ADD FOREIGN KEY (account_id) REFERENCES accounts (id);

-- A key binds as many accounts as its policy allows (one by default, RFC 8555 §7.3.4).
CREATE INDEX accounts_eab_kid ON accounts (eab_kid) WHERE eab_kid IS NOT NULL;

CREATE TABLE orders (
    tenant_id tenant_ref NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    status text NOT NULL,
    identifiers jsonb NOT NULL,
    expires timestamptz NOT NULL,
    created timestamptz NOT NULL,
    not_before timestamptz,
    not_after timestamptz,
    error jsonb,
    certificate_serial text,
    profile text,
    replaces text
);

CREATE INDEX orders_account ON orders (account_id, created DESC, seq DESC);

CREATE INDEX orders_processing ON orders (status) WHERE status = 'processing';

-- ARI (RFC 9773 §5): find the order that replaces a certificate.
CREATE INDEX orders_replaces ON orders (replaces) WHERE replaces IS NOT NULL;

CREATE TABLE authorizations (
    tenant_id tenant_ref NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    identifier_type text NOT NULL,
    identifier_value text NOT NULL,
    wildcard boolean NOT NULL,
    status text NOT NULL,
    expires timestamptz NOT NULL,
    created timestamptz NOT NULL
);

CREATE INDEX authorizations_account_identifier
    ON authorizations (account_id, identifier_type, identifier_value);

CREATE TABLE order_authorizations (
    tenant_id tenant_ref NOT NULL,
    order_id text NOT NULL REFERENCES orders (id),
    authorization_id text NOT NULL REFERENCES authorizations (id),
    position integer NOT NULL,
    PRIMARY KEY (order_id, position)
);

CREATE TABLE challenges (
    tenant_id tenant_ref NOT NULL,
    id text PRIMARY KEY,
    authorization_id text NOT NULL REFERENCES authorizations (id),
    position integer NOT NULL,
    type text NOT NULL,
    token text NOT NULL,
    status text NOT NULL,
    validated timestamptz,
    error jsonb
);

CREATE INDEX challenges_authorization ON challenges (authorization_id, position);

-- issuer_instance names the process that recorded a pending serial; while that
-- process lives it holds an advisory lock on the number (see postgres.py).
CREATE TABLE certificates (
    tenant_id tenant_ref NOT NULL,
    serial text PRIMARY KEY,
    account_id text REFERENCES accounts (id),
    order_id text REFERENCES orders (id),
    status text NOT NULL,
    not_before timestamptz NOT NULL,
    not_after timestamptz NOT NULL,
    created timestamptz NOT NULL,
    der bytea,
    revoked_at timestamptz,
    revocation_reason integer,
    shard integer NOT NULL DEFAULT 0,
    channel text NOT NULL,
    issuer_instance bigint
);

CREATE INDEX certificates_status_shard ON certificates (status, shard, not_after);

CREATE INDEX certificates_order ON certificates (order_id) WHERE order_id IS NOT NULL;

CREATE INDEX certificates_pending ON certificates (serial) WHERE status = 'pending';

-- The audit chain (acme_mt.audit); data is json, not jsonb, so the text that
-- was hashed is the text read back.
CREATE TABLE audit (
    tenant_id tenant_ref NOT NULL,
    seq bigint PRIMARY KEY,
    time timestamptz NOT NULL,
    event text NOT NULL,
    actor text NOT NULL,
    data json NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);

-- The chain's last link; appends lock this row, so one tenant's appends queue
-- while other tenants' do not.
CREATE TABLE audit_head (
    tenant_id tenant_ref PRIMARY KEY,
    seq bigint NOT NULL,
    hash text NOT NULL
);

INSERT INTO audit_head (tenant_id, seq, hash) VALUES (:'tenant_id', 0, repeat('0', 64));

-- EST enrollment credentials (RFC 7030 §3.2.3, HTTP Basic): only a salted
-- hash of the password; a revoked credential keeps its row, so its id and
-- username are never reused.
CREATE TABLE est_credentials (
    tenant_id tenant_ref NOT NULL,
    id text PRIMARY KEY,
    username text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created timestamptz NOT NULL,
    revoked_at timestamptz
);

CREATE TABLE nonces (
    tenant_id tenant_ref NOT NULL,
    value text PRIMARY KEY,
    expires timestamptz NOT NULL
);

CREATE INDEX nonces_expires ON nonces (expires);

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['eab_keys', 'accounts', 'orders', 'authorizations',
        'order_authorizations', 'challenges', 'certificates', 'audit', 'audit_head',
        'est_credentials', 'nonces']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', name);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', name);
        EXECUTE format('CREATE POLICY tenant_rows ON %I'
            ' USING (tenant_id = current_setting(''acme_mt.tenant_id'', true))'
            ' WITH CHECK (tenant_id = current_setting(''acme_mt.tenant_id'', true))', name);
    END LOOP;
END
$$;

-- The application role reads and writes state but never deletes it, and may
-- only append to the audit chain; nonces are the one thing it deletes.
GRANT SELECT, INSERT, UPDATE ON eab_keys, accounts, orders, authorizations,
    order_authorizations, challenges, certificates, audit_head, est_credentials
    TO :"app_role";
GRANT SELECT, INSERT ON audit TO :"app_role";
GRANT SELECT, INSERT, DELETE ON nonces TO :"app_role";
