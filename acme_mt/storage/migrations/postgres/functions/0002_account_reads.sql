-- The account behind every JWS (RFC 8555 §6.2: by the kid's account id, or by
-- the jwk's thumbprint at newAccount) read as one statement: one round trip
-- and one implicit transaction, where a read in a transaction of its own
-- takes three (BEGIN with the context, the SELECT, COMMIT). Like the write
-- functions it sets acme_mt.tenant_id for its transaction, so row-level
-- security binds the read to that tenant, runs as the caller (SECURITY
-- INVOKER) and names the table through the schema argument.
CREATE FUNCTION account_by(p_tenant text, p_schema text, p_column text, p_value text)
RETURNS TABLE (
    id text, thumbprint text, jwk jsonb, status text, contact jsonb, created timestamptz,
    eab_kid text
)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_column NOT IN ('id', 'thumbprint') THEN
        RAISE EXCEPTION 'accounts are read by id or thumbprint';
    END IF;
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    RETURN QUERY EXECUTE format('SELECT id, thumbprint, jwk, status, contact, created, eab_kid'
        ' FROM %I.accounts WHERE %I = $1', p_schema, p_column)
        USING p_value;
END
$$;

REVOKE ALL ON FUNCTION account_by(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION account_by(text, text, text, text) TO :"app_role";
