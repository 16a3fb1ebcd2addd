-- The provider's registry (schema acme_mt): every tenant, provider-level values,
-- and where each tenant's store lives. Provider-wide, so no row-level security;
-- the application role may read it and write tenants and values, never the
-- catalogue of stores, which only onboarding (the owner role) writes.
-- :"app_role" is the application role, filled in by the migration runner.

CREATE TABLE tenants (
    id text PRIMARY KEY,
    slug text NOT NULL UNIQUE,
    status text NOT NULL,
    policy jsonb NOT NULL,
    ca_certificate_pem text NOT NULL,
    ca_key_label text NOT NULL,
    created timestamptz NOT NULL,
    model text NOT NULL,
    tier text NOT NULL
);

CREATE TABLE provider_values (
    name text PRIMARY KEY,
    value text NOT NULL
);

-- One row per tenant store: its schema and, for the dedicated model, the
-- database that holds it (a DSN without credentials; NULL is this database).
CREATE TABLE tenant_stores (
    tenant_id text PRIMARY KEY,
    slug text NOT NULL UNIQUE,
    schema_name text NOT NULL UNIQUE,
    database_dsn text,
    created timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE ON tenants, provider_values TO :"app_role";
GRANT SELECT ON tenant_stores TO :"app_role";
