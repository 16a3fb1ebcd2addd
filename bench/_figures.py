"""Figures of one issuance run: throughput, latency percentiles, errors and polls.

The benchmark reports numbers and never passes or fails on them. Latency is
one whole RFC 8555 issuance, from newOrder to the downloaded chain (§7.4);
polls are the POST-as-GET reads of authorizations and orders (§7.5.1, §7.4).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _acme_client import Issued


@dataclass
class Tally:
    """Collects what each client finished so one summary can be drawn at the end."""

    issued: list[Issued] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    accounts: int = 0
    account_errors: int = 0

    @property
    def error_count(self) -> int:
        """Failed issuances and failed accounts together."""
        return sum(self.errors.values())


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile, so p99 of few samples is a sample that was seen."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarise(
    tally: Tally,
    *,
    server: str,
    clients: int,
    elapsed: float,
    abandoned: int,
    accounts_seconds: float,
    cpu_seconds: float,
    stalled: bool,
    stall_timeout: float,
) -> dict[str, Any]:
    """Reduce a run to the figures printed and written as JSON."""
    issued = tally.issued
    count = len(issued)
    seconds = [item.seconds for item in issued]
    authz_polls = sum(item.authz_polls for item in issued)
    order_polls = sum(item.order_polls for item in issued)

    def per_cert(total: float) -> float | None:
        return round(total / count, 3) if count else None

    def millis(value: float) -> float | None:
        return None if math.isnan(value) else round(value * 1000, 1)

    return {
        "server": server,
        "clients": clients,
        "accounts": tally.accounts,
        "accounts_seconds": round(accounts_seconds, 3),
        "certificates": count,
        "errors": tally.error_count,
        "error_kinds": dict(tally.errors.most_common()),
        "abandoned": abandoned,
        "elapsed_seconds": round(elapsed, 3),
        "certificates_per_second": round(count / elapsed, 2) if elapsed > 0 else None,
        "latency_ms": {
            "p50": millis(percentile(seconds, 0.50)),
            "p99": millis(percentile(seconds, 0.99)),
            "max": millis(max(seconds, default=math.nan)),
        },
        "polls_per_certificate": {
            "authz": per_cert(authz_polls),
            "order": per_cert(order_polls),
            "total": per_cert(authz_polls + order_polls),
        },
        "generator_cpu_ms_per_certificate": per_cert(cpu_seconds * 1000),
        "stalled": stalled,
        "stall_timeout_seconds": stall_timeout,
    }


def render(figures: dict[str, Any]) -> str:
    """Lay the figures out for a terminal, one quantity per line."""
    latency = figures["latency_ms"]
    polls = figures["polls_per_certificate"]
    rate = figures["certificates_per_second"]
    kinds = ", ".join(f"{kind} {n}" for kind, n in figures["error_kinds"].items())
    lines = [
        f"server        {figures['server']}",
        f"clients       {figures['clients']} "
        f"({figures['accounts']} accounts in {figures['accounts_seconds']:.2f} s)",
        f"certificates  {figures['certificates']} in {figures['elapsed_seconds']:.2f} s",
        f"rate          {_show(rate)} certificates/s",
        f"latency       p50 {_show(latency['p50'])} ms, p99 {_show(latency['p99'])} ms, "
        f"max {_show(latency['max'])} ms",
        f"polls/cert    {_show(polls['total'])} "
        f"(authz {_show(polls['authz'])}, order {_show(polls['order'])})",
        f"errors        {figures['errors']}" + (f" ({kinds})" if kinds else ""),
        f"abandoned     {figures['abandoned']} orders in flight when the run was stopped",
        f"generator     {_show(figures['generator_cpu_ms_per_certificate'])} ms CPU/cert",
    ]
    if figures["stalled"]:
        lines.append(
            f"STALLED       no progress for {figures['stall_timeout_seconds']:g} s; run stopped"
        )
    return "\n".join(lines)


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
