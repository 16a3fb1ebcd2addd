"""EST, Enrollment over Secure Transport (RFC 7030, updated by RFC 8951), per tenant.

Each tenant is an RFC 7030 CA label: ``cacerts`` and ``csrattrs`` answer
anyone; ``simpleenroll`` and ``serverkeygen`` need a client certificate of the
tenant's CA or an enrollment credential over HTTP Basic; ``simplereenroll``
needs the client's current certificate. Certificates are issued through
``acme_mt.authority`` and signed only by ``acme_mt.issuance``.

Divergences, by RFC 7030 section:
- §3.2.2: every request names a CA label (the tenant); ``/.well-known/est/{op}``
  without one is not served, since no tenant is the default for EST.
- §3.5: no tls-unique proof-of-possession linking (undefined on TLS 1.3).
- §4.3: full CMC is not offered (it is optional).
- §4.4.1.2: server-generated keys are returned unencrypted over TLS; the
  asymmetric and symmetric key-encryption attributes are not supported.
"""

from __future__ import annotations

from est.routes import est_routes, register_est

__all__ = ["est_routes", "register_est"]
