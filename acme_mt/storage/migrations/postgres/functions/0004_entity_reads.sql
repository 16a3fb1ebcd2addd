-- The reads of an ACME request beyond its account (RFC 8555 §7.1: the order
-- with its authorization ids, an authorization with its challenges, a
-- challenge, a certificate) as one statement each, as account_by does for
-- the account: one round trip and one implicit transaction where a read in
-- a transaction of its own took three or four (BEGIN with the context, each
-- SELECT, COMMIT). Each sets acme_mt.tenant_id for its transaction first, so
-- row-level security binds it to that tenant, runs as the caller (SECURITY
-- INVOKER) and names the tables through the schema argument.

CREATE FUNCTION order_by_id(p_tenant text, p_schema text, p_id text)
RETURNS TABLE (
    id text, account_id text, status text, identifiers jsonb, expires timestamptz,
    created timestamptz, not_before timestamptz, not_after timestamptz, error jsonb,
    certificate_serial text, profile text, replaces text, authorization_ids text[]
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    RETURN QUERY EXECUTE format('SELECT o.id, o.account_id, o.status, o.identifiers,'
        ' o.expires, o.created, o.not_before, o.not_after, o.error, o.certificate_serial,'
        ' o.profile, o.replaces, ARRAY(SELECT l.authorization_id'
        ' FROM %1$I.order_authorizations l WHERE l.order_id = o.id ORDER BY l.position)'
        ' FROM %1$I.orders o WHERE o.id = $1', p_schema)
        USING p_id;
END
$$;

-- An authorization by id, or, with p_id NULL, the newest valid and unexpired
-- one of an account for an identifier (authorization reuse, RFC 8555 §7.4).
-- One row per challenge in position order; the challenge columns are NULL
-- for an authorization that has none.
CREATE FUNCTION authorization_by(
    p_tenant text, p_schema text, p_id text, p_account text, p_type text, p_value text,
    p_wildcard boolean, p_now timestamptz
)
RETURNS TABLE (
    id text, account_id text, identifier_type text, identifier_value text, wildcard boolean,
    status text, expires timestamptz, created timestamptz, challenge_id text,
    challenge_type text, challenge_token text, challenge_status text,
    challenge_validated timestamptz, challenge_error jsonb
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF p_id IS NULL THEN
        EXECUTE format('SELECT id FROM %I.authorizations WHERE account_id = $1'
            ' AND identifier_type = $2 AND identifier_value = $3 AND wildcard = $4'
            ' AND status = ''valid'' AND expires > $5 ORDER BY created DESC, seq DESC LIMIT 1',
            p_schema)
            INTO p_id USING p_account, p_type, p_value, p_wildcard, p_now;
        IF p_id IS NULL THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY EXECUTE format('SELECT a.id, a.account_id, a.identifier_type,'
        ' a.identifier_value, a.wildcard, a.status, a.expires, a.created, c.id, c.type,'
        ' c.token, c.status, c.validated, c.error FROM %1$I.authorizations a'
        ' LEFT JOIN %1$I.challenges c ON c.authorization_id = a.id'
        ' WHERE a.id = $1 ORDER BY c.position', p_schema)
        USING p_id;
END
$$;

CREATE FUNCTION challenge_by_id(p_tenant text, p_schema text, p_id text)
RETURNS TABLE (
    id text, authorization_id text, type text, token text, status text,
    validated timestamptz, error jsonb
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    RETURN QUERY EXECUTE format('SELECT id, authorization_id, type, token, status,'
        ' validated, error FROM %I.challenges WHERE id = $1', p_schema)
        USING p_id;
END
$$;

CREATE FUNCTION certificate_by_serial(p_tenant text, p_schema text, p_serial text)
RETURNS TABLE (
    serial text, account_id text, order_id text, status text, not_before timestamptz,
    not_after timestamptz, created timestamptz, der bytea, revoked_at timestamptz,
    revocation_reason integer, shard integer, channel text
)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    RETURN QUERY EXECUTE format('SELECT serial, account_id, order_id, status, not_before,'
        ' not_after, created, der, revoked_at, revocation_reason, shard, channel'
        ' FROM %I.certificates WHERE serial = $1', p_schema)
        USING p_serial;
END
$$;

REVOKE ALL ON FUNCTION order_by_id(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION authorization_by(text, text, text, text, text, text, boolean, timestamptz)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION challenge_by_id(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION certificate_by_serial(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION order_by_id(text, text, text) TO :"app_role";
GRANT EXECUTE ON FUNCTION
    authorization_by(text, text, text, text, text, text, boolean, timestamptz) TO :"app_role";
GRANT EXECUTE ON FUNCTION challenge_by_id(text, text, text) TO :"app_role";
GRANT EXECUTE ON FUNCTION certificate_by_serial(text, text, text) TO :"app_role";
