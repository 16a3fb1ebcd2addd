"""CPU time and resident memory of a server and the worker processes under it (Linux /proc).

``acme-mt serve`` runs a supervisor with one worker process per CPU, so a
figure for the server is the sum over the supervisor and its descendants.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.live import free_port as free_port
from tests.support.live import process_tree as tree


def cpu_seconds(pid: int) -> float:
    """User plus system CPU used so far by ``pid`` and the processes below it."""
    ticks = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def resident_kib(pid: int) -> int:
    """Resident memory of ``pid`` and the processes below it, in KiB."""
    total = 0
    for member in tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)
    return total
