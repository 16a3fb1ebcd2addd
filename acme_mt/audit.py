"""The tenant audit chain: every record hashes the one before it.

Stores append records inside the transaction that makes the change they
describe; ``verify_chain`` walks a tenant's records and says where the chain
breaks, so an edited or deleted record shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

GENESIS_HASH = "0" * 64


def chain_hash(
    prev_hash: str, seq: int, time: datetime, event: str, actor: str, data: dict[str, Any]
) -> str:
    """The hash of one record: SHA-256 over its canonical JSON and the previous hash."""
    body = json.dumps(
        {
            "prev": prev_hash,
            "seq": seq,
            "time": time.isoformat(),
            "event": event,
            "actor": actor,
            "data": data,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def verify_chain(records: Iterable[Any]) -> int | None:
    """Return the sequence number of the first broken record, or None if all hold.

    Records need ``seq``, ``time``, ``event``, ``actor``, ``data``, ``prev_hash`` and ``hash``.
    """
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for record in records:
        if record.seq != expected_seq or record.prev_hash != expected_prev:
            return int(record.seq)
        digest = chain_hash(
            record.prev_hash, record.seq, record.time, record.event, record.actor, record.data
        )
        if digest != record.hash:
            return int(record.seq)
        expected_prev = record.hash
        expected_seq += 1
    return None
