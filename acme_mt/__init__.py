"""acme-mt: a multi-tenant PKI server speaking ACME, EST, OCSP and CRLs per tenant."""

__version__ = "0.1.0"
