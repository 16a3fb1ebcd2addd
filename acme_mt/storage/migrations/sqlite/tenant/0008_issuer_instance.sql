-- The process that recorded a pending serial, so that a process opening the
-- tenant abandons only the pending serials of processes that died (their lock
-- file under instances/ is no longer held). Rows from before this column are
-- NULL and, as before, abandoned by the first process to open the tenant.
ALTER TABLE certificates ADD COLUMN issuer_instance INTEGER;
