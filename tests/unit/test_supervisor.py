"""The supervisor against stand-in workers that speak its protocol and nothing else."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from acme_mt.errors import AcmeMtError
from acme_mt.workers import Supervisor, listen

#: A stand-in worker. Each start appends a line to START_LOG; the starts whose
#: numbers are in FAIL_STARTS exit with 3 before saying ready; the others say
#: ready, record "serving" once told to serve, and stay until the link closes.
STAND_IN = """
import json, os, socket, sys
from pathlib import Path
log = Path(sys.argv[1])
fail = {int(n) for n in sys.argv[2].split(",") if n}
with log.open("a") as f:
    f.write("start\\n")
start = log.read_text().count("start")
if start in fail:
    sys.exit(3)
link = socket.socket(fileno=int(os.environ["ACME_MT_INTERNAL_WORKER_FD"]))
lines = link.makefile("rwb")
first = json.loads(lines.readline())
assert set(first["listeners"]) == {"https"}
lines.write(b'{"ready": true}\\n'); lines.flush()
for line in lines:
    if json.loads(line).get("serve"):
        with log.open("a") as f:
            f.write("serving\\n")
"""


def supervisor(tmp_path: Path, count: int, fail_starts: str = "") -> Supervisor:
    command = [sys.executable, "-c", STAND_IN, str(tmp_path / "starts"), fail_starts]
    return Supervisor(command, count, {"https": listen("127.0.0.1:0", 8443)})


async def wait_for(condition, seconds: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_every_worker_is_told_to_serve_only_once_all_are_ready(tmp_path: Path) -> None:
    stop = asyncio.Event()
    log = tmp_path / "starts"
    announced: list[str] = []
    running = asyncio.create_task(
        supervisor(tmp_path, 3).run(stop, lambda: announced.append(log.read_text()))
    )

    await wait_for(lambda: log.exists() and log.read_text().count("serving") == 3)
    stop.set()
    await running

    assert announced and announced[0].count("start") == 3
    lines = log.read_text().splitlines()
    assert lines[: lines.index("serving")] == ["start"] * 3


async def test_a_worker_failing_at_first_start_stops_the_server(tmp_path: Path) -> None:
    with pytest.raises(AcmeMtError, match="did not start"):
        await supervisor(tmp_path, 2, fail_starts="2").run(asyncio.Event(), lambda: None)


async def test_a_worker_dying_later_is_started_again_until_it_serves(tmp_path: Path) -> None:
    # Start 3 replaces the worker killed below and fails before it is ready
    # (its store down, say); start 4 comes after a pause and serves.
    stop = asyncio.Event()
    under_test = supervisor(tmp_path, 2, fail_starts="3")
    running = asyncio.create_task(under_test.run(stop, lambda: None))
    log = tmp_path / "starts"
    await wait_for(lambda: log.exists() and log.read_text().count("serving") == 2)

    victim = under_test._workers[0].process
    assert victim is not None
    victim.kill()

    await wait_for(lambda: log.read_text().count("start") == 4)
    await wait_for(lambda: log.read_text().count("serving") == 3)
    stop.set()
    await running
