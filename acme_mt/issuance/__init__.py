"""Certificate issuance: the provider root, tenant CAs, leaf profiles, CSR checks, signing.

This package is the only code that signs (RFC 5280 certificates here; CRLs and
OCSP responses sign through ``acme_mt.issuance.signer`` too), and every
signature runs off the event loop. It stores nothing: the registration
authority records intent before ``Issuer.issue_leaf`` and the outcome after it,
in the tenant's audit chain, keyed by serial.
"""

from __future__ import annotations

from acme_mt.issuance.ca import (
    CA_LABEL,
    ROOT_LABEL,
    create_root_ca,
    create_tenant_ca,
    create_tls_certificate,
)
from acme_mt.issuance.certificates import (
    DEFAULT_EXTENDED_KEY_USAGES,
    Issuer,
    authority_key_identifier,
    new_serial,
    shard_for_serial,
)
from acme_mt.issuance.csr import check_csr, csr_identifiers, key_type_name, parse_csr
from acme_mt.issuance.signer import sign, signature_hash

__all__ = [
    "CA_LABEL",
    "DEFAULT_EXTENDED_KEY_USAGES",
    "ROOT_LABEL",
    "Issuer",
    "authority_key_identifier",
    "check_csr",
    "create_root_ca",
    "create_tenant_ca",
    "create_tls_certificate",
    "csr_identifiers",
    "key_type_name",
    "new_serial",
    "parse_csr",
    "shard_for_serial",
    "sign",
    "signature_hash",
]
