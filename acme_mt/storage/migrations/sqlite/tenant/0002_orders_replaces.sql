-- ARI (RFC 9773 §5): find the order that replaces a certificate.
CREATE INDEX orders_replaces ON orders (replaces) WHERE replaces IS NOT NULL;
