"""Logging set-up: every record carries the tenant and request id of its request.

Handlers set the two context variables once, in the request middleware; a
filter copies them onto each record, so no call site formats them by hand.
One JSON event per request goes to the ``acme_mt.request`` logger.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import secrets
import sys
from typing import Any

tenant_var: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

request_logger = logging.getLogger("acme_mt.request")

_PROCESS_PREFIX = secrets.token_hex(4)
_SEQUENCE = itertools.count(1)
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_for(offered: str | None) -> str:
    """The caller's ``X-Request-Id`` when it is safe to log, else a process-unique id."""
    if offered and _SAFE_ID.fullmatch(offered):
        return offered
    return f"{_PROCESS_PREFIX}{next(_SEQUENCE):x}"


class ContextFilter(logging.Filter):
    """Stamp the current tenant and request id on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.tenant = tenant_var.get()
        record.request_id = request_id_var.get()
        return True


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once for the server process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s tenant=%(tenant)s request=%(request_id)s "
            "%(message)s"
        )
    )
    # The format names none of the caller's file and line, thread or process:
    # skip looking them up for every record (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate the request event.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_request_event(event: dict[str, Any]) -> None:
    """Write the one structured event of a finished request."""
    if request_logger.isEnabledFor(logging.INFO):
        request_logger.info("%s", json.dumps(event, separators=(",", ":"), default=str))
