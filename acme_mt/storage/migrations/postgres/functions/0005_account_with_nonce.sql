-- A request signed with a kid (RFC 8555 §6.2) needs its nonce redeemed
-- (§6.5) and its account read: here both in one statement, one round trip
-- where they took one each. The nonce, when given, is inserted into the
-- tenant's spent set; only one insert of it can succeed, so nonce_fresh is
-- true once across all replicas. The account columns are NULL when the
-- tenant has no account by that id. With p_sweep, expired nonces go first.
-- Like the other functions it sets acme_mt.tenant_id for its transaction,
-- runs as the caller (SECURITY INVOKER) and names the tables through the
-- schema argument.
CREATE FUNCTION account_with_nonce(
    p_tenant text, p_schema text, p_id text, p_nonce text, p_expires timestamptz,
    p_sweep boolean
)
RETURNS TABLE (
    id text, thumbprint text, jwk jsonb, status text, contact jsonb, created timestamptz,
    eab_kid text, nonce_fresh boolean
)
LANGUAGE plpgsql AS $$
DECLARE
    spent integer := 0;
BEGIN
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF p_sweep THEN
        EXECUTE format('DELETE FROM %I.nonces WHERE expires < now()', p_schema);
    END IF;
    IF p_nonce IS NOT NULL THEN
        EXECUTE format('INSERT INTO %I.nonces (value, expires) VALUES ($1, $2)'
            ' ON CONFLICT (value) DO NOTHING', p_schema)
            USING p_nonce, p_expires;
        GET DIAGNOSTICS spent = ROW_COUNT;
    END IF;
    RETURN QUERY EXECUTE format('SELECT a.id, a.thumbprint, a.jwk, a.status, a.contact,'
        ' a.created, a.eab_kid, $2 FROM (SELECT 1) AS one'
        ' LEFT JOIN %I.accounts a ON a.id = $1', p_schema)
        USING p_id, spent = 1;
END
$$;

REVOKE ALL ON FUNCTION account_with_nonce(text, text, text, text, timestamptz, boolean)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION account_with_nonce(text, text, text, text, timestamptz, boolean)
    TO :"app_role";
