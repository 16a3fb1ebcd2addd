-- The start of an ACME issuance: the order goes to processing and its serial
-- is recorded as pending, in one statement. The order must still have the
-- status the caller saw: ready, or pending when the caller has just found
-- every authorization valid, so that a finalize right after the last
-- challenge does not first store the order as ready in a write of its own.
-- record_pending_certificate stays for serials outside an order (EST), and
-- for servers of the previous version during an upgrade.
CREATE FUNCTION begin_issuance(
    p_tenant text, p_schema text, p_seq bigint, p_hash text, p_time timestamptz,
    p_events text[], p_actors text[], p_data text[], p_hashes text[],
    p_order text, p_from text, s_serial text, s_account text, s_order text,
    s_not_before timestamptz, s_not_after timestamptz, s_created timestamptz,
    s_shard integer, s_channel text, s_instance bigint
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    recorded bigint;
BEGIN
    IF p_from NOT IN ('pending', 'ready') THEN
        RAISE EXCEPTION 'issuance begins from a pending or ready order';
    END IF;
    PERFORM set_config('acme_mt.tenant_id', p_tenant, true);
    IF NOT acme_mt_functions.chain_audit(p_schema, p_seq, p_hash, p_time, p_events, p_actors,
            p_data, p_hashes) THEN
        RETURN 'stale';
    END IF;
    EXECUTE format('WITH started AS (UPDATE %1$I.orders SET status = ''processing'','
        ' certificate_serial = $2 WHERE id = $1 AND status = $11 RETURNING 1)'
        ' INSERT INTO %1$I.certificates (serial, account_id, order_id, status, not_before,'
        ' not_after, created, shard, channel, issuer_instance)'
        ' SELECT $2, $3, $4, ''pending'', $5, $6, $7, $8, $9, $10'
        ' WHERE EXISTS (SELECT 1 FROM started)', p_schema)
        USING p_order, s_serial, s_account, s_order, s_not_before, s_not_after,
            s_created, s_shard, s_channel, s_instance, p_from;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF recorded = 0 THEN
        RAISE EXCEPTION 'unchanged' USING ERRCODE = 'no_data_found';
    END IF;
    RETURN 'done';
END
$$;

REVOKE ALL ON FUNCTION begin_issuance(
    text, text, bigint, text, timestamptz, text[], text[], text[], text[], text, text, text, text,
    text, timestamptz, timestamptz, timestamptz, integer, text, bigint
) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION begin_issuance(
    text, text, bigint, text, timestamptz, text[], text[], text[], text[], text, text, text, text,
    text, timestamptz, timestamptz, timestamptz, integer, text, bigint
) TO :"app_role";
