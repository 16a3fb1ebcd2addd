-- The provider's registry: every tenant and a few provider-level values.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    policy TEXT NOT NULL,
    ca_certificate_pem TEXT NOT NULL,
    ca_key_label TEXT NOT NULL,
    created INTEGER NOT NULL,
    model TEXT NOT NULL,
    tier TEXT NOT NULL
);

-- Named provider-level values, such as the root certificate's PEM.
CREATE TABLE provider_values (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
