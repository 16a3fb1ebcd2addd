"""Lock files tell the processes sharing a data directory which of them are alive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from acme_mt.storage.sqlite_liveness import FileLiveness

HOLDER = """
import sys, time
from pathlib import Path
from acme_mt.storage.sqlite_liveness import FileLiveness
liveness = FileLiveness(Path(sys.argv[1]))
liveness.hold()
print(liveness.instance, flush=True)
time.sleep(600)
"""


def test_a_living_process_is_alive_until_killed_and_then_its_file_goes(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        instance = int(holder.stdout.readline())
        checker = FileLiveness(tmp_path)

        alive = checker.dead({instance})
        holder.kill()
        holder.wait(10)
        gone = checker.dead({instance})
    finally:
        holder.kill()

    assert (alive, gone) == (set(), {instance})
    assert not (tmp_path / f"{instance}.lock").exists()


def test_a_process_is_never_dead_to_itself_and_unknown_ones_are(tmp_path: Path) -> None:
    liveness = FileLiveness(tmp_path)
    liveness.hold()
    liveness.hold()  # once is enough; again changes nothing

    assert liveness.dead({liveness.instance, 12345}) == {12345}

    liveness.close()
    assert FileLiveness(tmp_path).dead({liveness.instance}) == {liveness.instance}
