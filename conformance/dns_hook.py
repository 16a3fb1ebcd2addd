#!/usr/bin/env python3
"""Publish and withdraw dns-01 TXT values (RFC 8555 §8.4) for the test DNS server.

The values go to the records directory named by ``ACME_MT_TEST_DNS_RECORDS``,
one file per name (``<name>.txt``, one value per line), which
``conformance/dns_server.py`` reads on every query. It needs only the standard
library, so any ``python3`` can run it.

lego's ``exec`` DNS provider (``EXEC_PATH=conformance/dns_hook.py``, its
default mode, not ``EXEC_MODE=RAW``) calls, older versions adding a TTL::

    dns_hook.py present|cleanup _acme-challenge.example.com. VALUE [TTL]

certbot's manual hooks pass the name and value in the environment
(``CERTBOT_DOMAIN``, ``CERTBOT_VALIDATION``), so give them only the verb::

    --manual-auth-hook "conformance/dns_hook.py present"
    --manual-cleanup-hook "conformance/dns_hook.py cleanup"
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import tempfile
from pathlib import Path

RECORDS_ENV = "ACME_MT_TEST_DNS_RECORDS"
VERBS = ("present", "cleanup")
USAGE = (
    f"usage: {RECORDS_ENV}=DIR dns_hook.py present|cleanup [FQDN VALUE [TTL]]\n"
    "without FQDN and VALUE, CERTBOT_DOMAIN and CERTBOT_VALIDATION are used"
)


def record_file(records: Path, fqdn: str) -> Path:
    """The file for a name; the same layout as ``dns_server.txt_file``."""
    name = fqdn.rstrip(".").lower()
    if not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*", name):
        raise ValueError(f"the test DNS server cannot serve {fqdn!r}")
    return records / f"{name}.txt"


def change(records: Path, fqdn: str, value: str, present: bool) -> None:
    """Add or remove one value, under a lock, replacing the file in one step."""
    path = record_file(records, fqdn)
    with open(records / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        values = [line.strip() for line in lines if line.strip()]
        if present and value not in values:
            values.append(value)
        if not present:
            values = [v for v in values if v != value]
        if not values:
            path.unlink(missing_ok=True)
            return
        handle, temporary = tempfile.mkstemp(dir=records, prefix=".txt-")
        with os.fdopen(handle, "w") as out:
            out.write("".join(f"{v}\n" for v in values))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)


def main(argv: list[str]) -> int:
    """Parse lego's or certbot's way of calling and apply the change."""
    records_dir = os.environ.get(RECORDS_ENV)
    verb = argv[0] if argv else ""
    if not records_dir or len(argv) not in (1, 3, 4) or verb not in VERBS:
        print(USAGE, file=sys.stderr)
        return 2
    if len(argv) > 1:
        fqdn, value = argv[1], argv[2]
    else:
        domain = os.environ.get("CERTBOT_DOMAIN", "")
        value = os.environ.get("CERTBOT_VALIDATION", "")
        if not domain or not value:
            print(USAGE, file=sys.stderr)
            return 2
        fqdn = "_acme-challenge." + domain.removeprefix("*.")

    records = Path(records_dir)
    records.mkdir(parents=True, exist_ok=True)
    try:
        change(records, fqdn, value, present=verb == "present")
    except (OSError, ValueError) as exc:
        print(f"dns_hook: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
