"""Running a conformance script from pytest, bounded in time and stopped with its children."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest


def run_script(script: Path, env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``bash script`` in its own session; fail the test if it outlives ``timeout``."""
    process = subprocess.Popen(
        ["bash", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"{script.name} did not finish in {timeout} s:\n{output[-8000:]}")
    return process.returncode, output
