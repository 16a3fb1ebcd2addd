"""Orders (RFC 8555 §7.4): creation, status, finalization and issuance.

Issuance is ordered so that a crash at any point leaves either a finished
certificate with its record, or an order that can be finalized again: the
serial is recorded and the order moved to processing in one transaction, then
the certificate is signed, then the record and the order are completed in one
more. A serial recorded but never completed is abandoned at the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import josepy as jose
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.authority.authorizations import is_expired, new_authorization
from acme_mt.authority.caa import check_authorization_caa, needs_recheck
from acme_mt.authority.domains import prevalidate
from acme_mt.authority.identifiers import base_identifier, check_identifiers, comparable
from acme_mt.authority.renewal import check_replaces
from acme_mt.errors import AcmeProblem, Subproblem
from acme_mt.events import Events
from acme_mt.issuance import check_csr, csr_identifiers, new_serial, parse_csr, shard_for_serial
from acme_mt.jws import account_key, thumbprint
from acme_mt.models import (
    Account,
    AuditEntry,
    Authorization,
    AuthorizationStatus,
    CertificateRecord,
    CertificateStatus,
    Identifier,
    Order,
    OrderStatus,
    new_id,
    utcnow,
)
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.profiles import Profile
from acme_mt.validation import Validator

logger = logging.getLogger(__name__)

#: Backdating absorbs small clock differences between the CA and relying parties.
BACKDATE = timedelta(minutes=1)


def parse_time(raw: Any, field: str) -> datetime | None:
    """Read an RFC 3339 timestamp from a newOrder payload."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise AcmeProblem("malformed", f"{field} must be an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise AcmeProblem("malformed", f"{field} must be an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise AcmeProblem("malformed", f"{field} needs a time zone")
    return moment.replace(microsecond=0)


class OrderService:
    """The only writer of orders; drives issuance through the tenant's issuer."""

    def __init__(self, events: Events, validator: Validator, https_url: str) -> None:
        self._events = events
        self._validator = validator
        self._https_url = https_url

    async def new_order(
        self, tenant: TenantContext, account: Account, payload: dict[str, Any]
    ) -> Order:
        """RFC 8555 §7.4: validate identifiers and make or reuse authorizations."""
        policy = tenant.policy
        profile = self._profile(tenant, payload.get("profile"))
        identifiers = check_identifiers(payload.get("identifiers"), policy, profile)
        await self._check_eab_policy(tenant, account, identifiers, profile)
        replaces = None
        if "replaces" in payload:
            replaces = await check_replaces(tenant, account, payload["replaces"])
        now = utcnow()
        not_before = parse_time(payload.get("notBefore"), "notBefore")
        not_after = parse_time(payload.get("notAfter"), "notAfter")
        self._check_validity(profile, now, not_before, not_after)
        authz_expires = now + timedelta(hours=profile.authorization_lifetime_hours)
        order_expires = now + timedelta(hours=profile.order_lifetime_hours)
        authorization_ids: list[str] = []
        created: list[Authorization] = []
        for identifier in identifiers:
            base, wildcard = base_identifier(identifier)
            reusable = await tenant.store.find_reusable_authorization(
                account.id, base, wildcard, now
            )
            if reusable is not None:
                authorization_ids.append(reusable.id)
                order_expires = min(order_expires, reusable.expires)
                continue
            authorization = new_authorization(account.id, base, wildcard, authz_expires)
            created.append(authorization)
            authorization_ids.append(authorization.id)
        created = await prevalidate(tenant, account, created, self._validator, self._https_url)
        # Reused authorizations are valid; the order is ready when every new one is too.
        all_valid = all(a.status == AuthorizationStatus.VALID for a in created)
        order = Order(
            id=new_id(),
            account_id=account.id,
            status=OrderStatus.READY if all_valid else OrderStatus.PENDING,
            identifiers=identifiers,
            authorization_ids=tuple(authorization_ids),
            expires=order_expires,
            created=now,
            not_before=not_before,
            not_after=not_after,
            profile=profile.name,
            replaces=replaces,
        )
        audit = AuditEntry(
            "order.created",
            {
                "order": order.id,
                "account": account.id,
                "identifiers": [i.value for i in identifiers],
            },
        )
        await tenant.store.create_order(order, created, (audit,))
        return order

    @staticmethod
    async def _check_eab_policy(
        tenant: TenantContext,
        account: Account,
        identifiers: tuple[Identifier, ...],
        profile: Profile,
    ) -> None:
        """Accounts bound through a restricted EAB key order only what the key allows."""
        if account.eab_kid is None:
            return
        key = await tenant.store.get_eab_key(account.eab_kid)
        if key is None:
            return
        policy = key.policy
        if policy.allowed_profiles and profile.name not in policy.allowed_profiles:
            raise AcmeProblem(
                "invalidProfile",
                f"this account's EAB key allows profiles {', '.join(policy.allowed_profiles)}",
            )
        refused = [
            Subproblem(
                "rejectedIdentifier",
                f"this account's EAB key allows only names under "
                f"{', '.join(policy.allowed_suffixes)}",
                i.to_json(),
            )
            for i in identifiers
            if policy.allowed_suffixes and (i.type != "dns" or not policy.allows_name(i.value))
        ]
        if refused:
            detail = (
                refused[0].detail if len(refused) == 1 else f"{len(refused)} identifiers refused"
            )
            raise AcmeProblem("rejectedIdentifier", detail, tuple(refused))

    @staticmethod
    def _profile(tenant: TenantContext, requested: Any) -> Profile:
        """The profile an order asks for (draft-ietf-acme-profiles §4), or the default."""
        if requested is not None and not isinstance(requested, str):
            raise AcmeProblem("malformed", "profile must be a string")
        profile = tenant.policy.profile(requested)
        if profile is None:
            names = ", ".join(p.name for p in tenant.policy.all_profiles())
            raise AcmeProblem("invalidProfile", f"Unknown profile {requested!r}; offered: {names}")
        return profile

    def _check_validity(
        self,
        profile: Profile,
        now: datetime,
        not_before: datetime | None,
        not_after: datetime | None,
    ) -> None:
        max_days = profile.validity_days
        start = not_before or now
        if not_after is not None and not_after <= start:
            raise AcmeProblem("malformed", "notAfter must be later than notBefore")
        if not_before is not None and not_before > now + timedelta(days=max_days):
            raise AcmeProblem("malformed", "notBefore is too far in the future")
        if not_after is not None and not_after - start > timedelta(days=max_days):
            raise AcmeProblem(
                "malformed",
                f"profile {profile.name} (policy max_validity_days) allows at most {max_days} days",
            )

    async def refresh(self, tenant: TenantContext, order: Order) -> Order:
        """Bring a pending or ready order's status up to date with its authorizations."""
        status, error = await self._status_now(tenant, order)
        if status == order.status:
            return order
        updated = replace(order, status=status, error=error)
        await tenant.store.update_order(updated)
        return updated

    async def _status_now(
        self, tenant: TenantContext, order: Order
    ) -> tuple[str, dict[str, Any] | None]:
        """What a pending or ready order's status is by its authorizations, without storing it."""
        return _status_by(order, await _authorizations_of(tenant, order))

    async def finalize(
        self, tenant: TenantContext, account: Account, order: Order, payload: dict[str, Any]
    ) -> Order:
        """RFC 8555 §7.4: check the CSR against the order and policy, then issue."""
        # A pending order whose authorizations are all valid goes to processing in one
        # write; any other outcome is stored as refresh stores it.
        # Read once for both the status and the CAA recheck below.
        authorizations = await _authorizations_of(tenant, order)
        status, _error = _status_by(order, authorizations)
        if status != OrderStatus.READY:
            order = await self.refresh(tenant, order)
            raise AcmeProblem("orderNotReady", f"The order is {order.status}, not ready")
        csr_b64 = payload.get("csr")
        if not isinstance(csr_b64, str):
            raise AcmeProblem("malformed", "finalize needs a csr")
        csr = _decode_csr(csr_b64)
        self._check_csr_against_order(csr, order, account)
        await self._recheck_caa(tenant, account, authorizations)
        profile = tenant.policy.profile(order.profile) or tenant.policy.all_profiles()[0]
        check_csr(csr, replace(tenant.policy, key_types=profile.key_types))
        now = utcnow()
        not_before = order.not_before or (now - BACKDATE)
        longest = not_before + timedelta(days=profile.validity_days)
        ca_end = tenant.issuer.certificate.not_valid_after_utc
        not_after = min(order.not_after or longest, longest, ca_end)
        serial = new_serial()
        serial_hex = format(serial, "x")
        record = CertificateRecord(
            serial=serial_hex,
            account_id=account.id,
            order_id=order.id,
            status=CertificateStatus.PENDING,
            not_before=not_before,
            not_after=not_after,
            created=now,
            shard=shard_for_serial(serial, tenant.policy.crl_shards),
        )
        processing = replace(order, status=OrderStatus.PROCESSING, certificate_serial=serial_hex)
        intent = AuditEntry(
            "certificate.signing",
            {
                "serial": serial_hex,
                "order": order.id,
                "names": [i.value for i in order.identifiers],
            },
        )
        began = await tenant.store.begin_issuance(
            processing, record, (intent,), from_status=order.status
        )
        if not began:
            raise AcmeProblem("orderNotReady", "The order is already being finalized")
        sans = [(i.type, i.value) for i in order.identifiers]
        try:
            certificate = await tenant.issuer.issue_leaf(
                csr,
                sans,
                not_before=not_before,
                not_after=not_after,
                serial=serial,
                shard=record.shard,
                ocsp=tenant.policy.ocsp,
                extended_key_usages=profile.eku_oids,
            )
        except Exception:
            logger.exception("signing serial %s failed", serial_hex)
            failed = AuditEntry("certificate.failed", {"serial": serial_hex})
            await tenant.store.abandon_issuance(
                replace(order, status=OrderStatus.READY, certificate_serial=None),
                serial_hex,
                (failed,),
            )
            raise
        der = certificate.public_bytes(serialization.Encoding.DER)
        issued = replace(
            record,
            status=CertificateStatus.VALID,
            der=der,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
        )
        valid = replace(processing, status=OrderStatus.VALID)
        outcome = AuditEntry("certificate.issued", {"serial": serial_hex, "order": order.id})
        await tenant.store.complete_issuance(valid, issued, (outcome,))
        self._events.issued(tenant.id, serial_hex)
        logger.info("issued serial %s for order %s", serial_hex, order.id)
        return valid

    async def _recheck_caa(
        self,
        tenant: TenantContext,
        account: Account,
        authorizations: Sequence[Authorization | None],
    ) -> None:
        """RFC 8659 §3: a CAA check older than the policy allows is made again at issuance."""
        for authorization in authorizations:
            if authorization is None:
                continue
            method = needs_recheck(tenant, authorization)
            if method is not None:
                await check_authorization_caa(
                    self._validator, tenant, self._https_url, account, authorization, method
                )

    def _check_csr_against_order(
        self, csr: x509.CertificateSigningRequest, order: Order, account: Account
    ) -> None:
        wanted = {comparable(i) for i in order.identifiers}
        asked = csr_identifiers(csr)
        if asked != wanted:
            missing = sorted(v for _, v in wanted - asked)
            extra = sorted(v for _, v in asked - wanted)
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"not in the order: {', '.join(extra)}")
            raise AcmeProblem(
                "badCSR", "The CSR's names differ from the order's: " + "; ".join(parts)
            )
        if _spki(csr.public_key()) == _spki(account_key(account).key):
            raise AcmeProblem("badCSR", "The certificate key must differ from the account key")


async def _authorizations_of(tenant: TenantContext, order: Order) -> list[Authorization | None]:
    """The order's authorizations in its order (None for one gone), if its status needs them."""
    if order.status not in (OrderStatus.PENDING, OrderStatus.READY):
        return []
    return [await tenant.store.get_authorization(a) for a in order.authorization_ids]


def _status_by(
    order: Order, authorizations: Sequence[Authorization | None]
) -> tuple[str, dict[str, Any] | None]:
    """A pending or ready order's status by its authorizations, as of now."""
    if order.status not in (OrderStatus.PENDING, OrderStatus.READY):
        return order.status, order.error
    now = utcnow()
    if order.expires <= now:
        problem = AcmeProblem("malformed", "The order expired before it was finalized")
        return OrderStatus.INVALID, problem.to_json()
    status = OrderStatus.READY
    for authorization in authorizations:
        if authorization is None or authorization.status in (
            AuthorizationStatus.INVALID,
            AuthorizationStatus.DEACTIVATED,
            AuthorizationStatus.REVOKED,
        ):
            return OrderStatus.INVALID, _authorization_error(authorization)
        if is_expired(authorization, now):
            problem = AcmeProblem("unauthorized", "An authorization expired")
            return OrderStatus.INVALID, problem.to_json()
        if authorization.status != AuthorizationStatus.VALID:
            status = OrderStatus.PENDING
    return status, None


def _spki(public_key: Any) -> bytes:
    """A public key's SubjectPublicKeyInfo: equal for the same key, whatever its type."""
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _decode_csr(csr_b64: str) -> x509.CertificateSigningRequest:
    try:
        der = jose.b64decode(csr_b64)
    except (ValueError, TypeError):
        raise AcmeProblem("badCSR", "The csr is not base64url") from None
    return parse_csr(der)


def public_key_thumbprint(public_key: Any) -> str | None:
    """The RFC 7638 thumbprint of a certificate key, or None for types JWK cannot express."""
    for kind in (jose.JWKEC, jose.JWKRSA):
        if isinstance(public_key, kind.cryptography_key_types):
            try:
                return thumbprint(kind(key=public_key))
            except (jose.Error, ValueError, TypeError, KeyError):
                return None
    return None


def _authorization_error(authorization: Authorization | None) -> dict[str, Any]:
    if authorization is not None:
        for challenge in authorization.challenges:
            if challenge.error:
                return challenge.error
    return AcmeProblem("unauthorized", "An authorization of this order is not valid").to_json()
