-- The tenant store's writes as functions, so that each write is one statement
-- from the client: one round trip and one implicit transaction. The runner
-- applies this file to the schema acme_mt_functions of every database that
-- holds tenant schemas, as the owner role, and fills in :"app_role".
--
-- Every write function takes the tenant's id and schema first and sets
-- acme_mt.tenant_id for the transaction, as every store transaction does, so
-- row-level security binds each statement to that tenant. The functions are
-- SECURITY INVOKER (the default): they run as the application role, with its
-- grants and under its policies, and can do nothing the role could not do
-- with plain statements.
--
-- Statements name the tenant's tables through the schema argument (EXECUTE
-- format('%I.table')), so they are parsed and planned on every call and no
-- server process keeps plans per tenant. They never change search_path:
-- that would make PostgreSQL plan every statement and expression of the
-- function again whenever consecutive calls on a connection belong to
-- different tenants. Planning is most of a write's cost, so statements stay
-- plain (a VALUES row where there is one row).
--
-- Then come the audit chain's head as the caller last saw it and the entries
-- it chained after that head, hashes included (acme_mt.audit computes them);
-- with no entries the head is NULL and the chain is left alone. A write moves
-- the head and appends its entries before it touches any other row, so one
-- tenant's audited writes queue on the head and cannot deadlock, and answers
-- 'stale', having changed nothing, when the head has moved on. It answers
-- 'done' when it wrote. A write whose condition does not hold (an order that
-- is not ready, a certificate that is not valid) raises no_data_found
-- (P0002), and a record that should exist and does not raises P0001 with a
-- message for the caller; either rolls the whole write back, audit entries
-- included.

-- Moves the head from (p_seq, p_hash) past the entries and appends them;
-- false when the head is elsewhere (then nothing changed). Two plain
-- statements plan faster than one that does both.
CREATE FUNCTION chain_audit(
    p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[]
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    entries integer := coalesce(cardinality(p_hashes), 0);
    moved bigint;
BEGIN
    IF p_seq IS NULL OR entries = 0 THEN
        RETURN true;
    END IF;
    EXECUTE format('UPDATE %I.audit_head SET seq = $3, hash = $4 WHERE seq = $1 AND hash = $2',
        p_schema)
        USING p_seq, p_hash, p_seq + entries, p_hashes[entries];
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved = 0 THEN
        RETURN false;
    END IF;
    IF entries = 1 THEN
        EXECUTE format('INSERT INTO %I.audit (seq, time, event, actor, data, prev_hash, hash)'
            ' VALUES ($1, $2, $3, $4, $5::json, $6, $7)', p_schema)
            USING p_seq + 1, p_time, p_events[1], p_actors[1], p_data[1], p_hash, p_hashes[1];
    ELSE
        EXECUTE format('INSERT INTO %I.audit (seq, time, event, actor, data, prev_hash, hash)'
            ' SELECT $1 + r.n, $2, r.event, r.actor, r.data::json,'
            ' CASE WHEN r.n = 1 THEN $3 ELSE $7[r.n - 1] END, r.hash'
            ' FROM unnest($4, $5, $6, $7) WITH ORDINALITY AS r (event, actor, data, hash, n)',
            p_schema)
            USING p_seq, p_time, p_hash, p_events, p_actors, p_data, p_hashes;
    END IF;
    RETURN true;
END
$$;

CREATE FUNCTION record_audit(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[]
) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    RETURN 'done';
END
$$;

-- RFC 8555 §7.4: an order, its new authorizations with their challenges (a
-- challenge's position is its place in its authorization), and its links in
-- the order's sequence; every link must name an authorization of the account.
CREATE FUNCTION create_order(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    o_id text, o_account text, o_status text, o_identifiers text, o_expires timestamptz,
    o_created timestamptz, o_not_before timestamptz, o_not_after timestamptz, o_error text,
    o_serial text, o_profile text, o_replaces text, o_authorizations text[],
    a_id text[], a_account text[], a_type text[], a_value text[], a_wildcard boolean[],
    a_status text[], a_expires timestamptz[], a_created timestamptz[],
    c_id text[], c_authorization text[], c_position integer[], c_type text[], c_token text[],
    c_status text[], c_validated timestamptz[], c_error text[]
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    linked bigint;
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('WITH new_order AS (INSERT INTO %1$I.orders (id, account_id, status,'
        ' identifiers, expires, created, not_before, not_after, error, certificate_serial,'
        ' profile, replaces) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9::jsonb, $10,'
        ' $11, $12)),'
        ' new_authorizations AS (INSERT INTO %1$I.authorizations (id, account_id,'
        ' identifier_type, identifier_value, wildcard, status, expires, created)'
        ' SELECT * FROM unnest($14, $15, $16, $17, $18, $19, $20, $21)'
        ' RETURNING id, account_id),'
        ' new_challenges AS (INSERT INTO %1$I.challenges (id, authorization_id, position,'
        ' type, token, status, validated, error)'
        ' SELECT c.id, c.authorization_id, c.position, c.type, c.token, c.status,'
        ' c.validated, c.error::jsonb FROM unnest($22, $23, $24, $25, $26, $27, $28, $29)'
        ' AS c (id, authorization_id, position, type, token, status, validated, error))'
        ' INSERT INTO %1$I.order_authorizations (order_id, authorization_id, position)'
        ' SELECT $1, link.id, link.position - 1'
        ' FROM unnest($13) WITH ORDINALITY AS link (id, position)'
        ' WHERE link.id IN (SELECT id FROM new_authorizations WHERE account_id = $2)'
        ' OR link.id IN (SELECT id FROM %1$I.authorizations WHERE account_id = $2'
        ' AND id = ANY ($13))', p_schema)
        USING o_id, o_account, o_status, o_identifiers, o_expires, o_created, o_not_before,
            o_not_after, o_error, o_serial, o_profile, o_replaces, o_authorizations,
            a_id, a_account, a_type, a_value, a_wildcard, a_status, a_expires, a_created,
            c_id, c_authorization, c_position, c_type, c_token, c_status, c_validated, c_error;
    GET DIAGNOSTICS linked = ROW_COUNT;
    IF linked <> coalesce(cardinality(o_authorizations), 0) THEN
        RAISE EXCEPTION 'an order may link only its account''s authorizations';
    END IF;
    RETURN 'done';
END
$$;

-- RFC 8555 §7.4.1: an authorization and its challenges outside any order.
CREATE FUNCTION create_authorization(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    a_id text[], a_account text[], a_type text[], a_value text[], a_wildcard boolean[],
    a_status text[], a_expires timestamptz[], a_created timestamptz[],
    c_id text[], c_authorization text[], c_position integer[], c_type text[], c_token text[],
    c_status text[], c_validated timestamptz[], c_error text[]
) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('WITH new_authorizations AS (INSERT INTO %1$I.authorizations (id,'
        ' account_id, identifier_type, identifier_value, wildcard, status, expires, created)'
        ' SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8))'
        ' INSERT INTO %1$I.challenges (id, authorization_id, position, type, token, status,'
        ' validated, error)'
        ' SELECT c.id, c.authorization_id, c.position, c.type, c.token, c.status,'
        ' c.validated, c.error::jsonb FROM unnest($9, $10, $11, $12, $13, $14, $15, $16)'
        ' AS c (id, authorization_id, position, type, token, status, validated, error)',
        p_schema)
        USING a_id, a_account, a_type, a_value, a_wildcard, a_status, a_expires, a_created,
            c_id, c_authorization, c_position, c_type, c_token, c_status, c_validated, c_error;
    RETURN 'done';
END
$$;

-- An authorization's status and expiry and the state of each of its challenges.
CREATE FUNCTION update_authorization(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    a_id text, a_status text, a_expires timestamptz,
    c_id text[], c_status text[], c_validated timestamptz[], c_error text[]
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    authorizations bigint;
    challenges bigint;
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('WITH a AS (UPDATE %1$I.authorizations SET status = $2, expires = $3'
        ' WHERE id = $1 RETURNING 1),'
        ' c AS (UPDATE %1$I.challenges c SET status = u.status, validated = u.validated,'
        ' error = u.error::jsonb FROM unnest($4, $5, $6, $7) AS u (id, status, validated, error)'
        ' WHERE c.id = u.id AND c.authorization_id = $1 RETURNING 1)'
        ' SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM c)', p_schema)
        INTO authorizations, challenges
        USING a_id, a_status, a_expires, c_id, c_status, c_validated, c_error;
    IF authorizations = 0 THEN
        RAISE EXCEPTION 'no such authorization';
    END IF;
    IF challenges <> coalesce(cardinality(c_id), 0) THEN
        RAISE EXCEPTION 'no such challenge';
    END IF;
    RETURN 'done';
END
$$;

-- An order's mutable columns; its identifiers and links never change.
CREATE FUNCTION update_order(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    o_id text, o_status text, o_expires timestamptz, o_not_before timestamptz,
    o_not_after timestamptz, o_error text, o_serial text, o_profile text, o_replaces text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    changed bigint;
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('UPDATE %I.orders SET status = $2, expires = $3, not_before = $4,'
        ' not_after = $5, error = $6::jsonb, certificate_serial = $7, profile = $8,'
        ' replaces = $9 WHERE id = $1', p_schema)
        USING o_id, o_status, o_expires, o_not_before, o_not_after, o_error, o_serial,
            o_profile, o_replaces;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed = 0 THEN
        RAISE EXCEPTION 'no such order';
    END IF;
    RETURN 'done';
END
$$;

-- A serial recorded before it is signed, naming the process that will sign
-- it; with p_ready_order, only if that order is ready, which it leaves
-- processing.
CREATE FUNCTION record_pending_certificate(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    p_ready_order text, s_serial text, s_account text, s_order text, s_not_before timestamptz,
    s_not_after timestamptz, s_created timestamptz, s_shard integer, s_channel text,
    s_instance bigint
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    recorded bigint;
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('WITH ready AS (UPDATE %1$I.orders SET status = ''processing'','
        ' certificate_serial = $2 WHERE id = $1 AND status = ''ready'' RETURNING 1)'
        ' INSERT INTO %1$I.certificates (serial, account_id, order_id, status, not_before,'
        ' not_after, created, shard, channel, issuer_instance)'
        ' SELECT $2, $3, $4, ''pending'', $5, $6, $7, $8, $9, $10'
        ' WHERE $1 IS NULL OR EXISTS (SELECT 1 FROM ready)', p_schema)
        USING p_ready_order, s_serial, s_account, s_order, s_not_before, s_not_after,
            s_created, s_shard, s_channel, s_instance;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF recorded = 0 THEN
        RAISE EXCEPTION 'unchanged' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN 'done';
END
$$;

-- The signed DER of a pending (or abandoned) serial, and the order's final
-- state when o_id is given.
CREATE FUNCTION complete_issuance(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    s_serial text, s_der bytea, s_not_before timestamptz, s_not_after timestamptz,
    o_id text, o_status text, o_expires timestamptz, o_not_before timestamptz,
    o_not_after timestamptz, o_error text, o_serial text, o_profile text, o_replaces text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    certificates bigint;
    orders bigint;
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('WITH s AS (UPDATE %1$I.certificates SET der = $2, status = ''valid'','
        ' not_before = $3, not_after = $4'
        ' WHERE serial = $1 AND status IN (''pending'', ''abandoned'') RETURNING 1),'
        ' o AS (UPDATE %1$I.orders SET status = $6, expires = $7, not_before = $8,'
        ' not_after = $9, error = $10::jsonb, certificate_serial = $11, profile = $12,'
        ' replaces = $13 WHERE id = $5 RETURNING 1)'
        ' SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM o)', p_schema)
        INTO certificates, orders
        USING s_serial, s_der, s_not_before, s_not_after, o_id, o_status, o_expires,
            o_not_before, o_not_after, o_error, o_serial, o_profile, o_replaces;
    IF certificates = 0 THEN
        RAISE EXCEPTION 'no such pending certificate';
    END IF;
    IF o_id IS NOT NULL AND orders = 0 THEN
        RAISE EXCEPTION 'no such order';
    END IF;
    RETURN 'done';
END
$$;

CREATE FUNCTION abandon_issuance(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    s_serial text,
    o_id text, o_status text, o_expires timestamptz, o_not_before timestamptz,
    o_not_after timestamptz, o_error text, o_serial text, o_profile text, o_replaces text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    orders bigint;
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('WITH s AS (UPDATE %1$I.certificates SET status = ''abandoned'''
        ' WHERE serial = $1 AND status = ''pending'' RETURNING 1),'
        ' o AS (UPDATE %1$I.orders SET status = $3, expires = $4, not_before = $5,'
        ' not_after = $6, error = $7::jsonb, certificate_serial = $8, profile = $9,'
        ' replaces = $10 WHERE id = $2 RETURNING 1)'
        ' SELECT (SELECT count(*) FROM o)', p_schema)
        INTO orders
        USING s_serial, o_id, o_status, o_expires, o_not_before, o_not_after, o_error,
            o_serial, o_profile, o_replaces;
    IF o_id IS NOT NULL AND orders = 0 THEN
        RAISE EXCEPTION 'no such order';
    END IF;
    RETURN 'done';
END
$$;

-- RFC 5280 §5.3.1: only a valid certificate is revoked, once.
CREATE FUNCTION revoke_certificate(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    s_serial text, s_revoked_at timestamptz, s_reason integer
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    changed bigint;
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('UPDATE %I.certificates SET status = ''revoked'', revoked_at = $2,'
        ' revocation_reason = $3 WHERE serial = $1 AND status = ''valid''', p_schema)
        USING s_serial, s_revoked_at, s_reason;
    GET DIAGNOSTICS changed = ROW_COUNT;
    IF changed = 0 THEN
        RAISE EXCEPTION 'unchanged' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN 'done';
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA acme_mt_functions FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA acme_mt_functions TO :"app_role";
