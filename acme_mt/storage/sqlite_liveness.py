"""Which processes sharing a data directory are alive, told by lock files.

Several worker processes issue from the same tenant files. A serial is recorded
as pending before it is signed and names the process signing it; when a process
first opens a tenant it abandons the pending serials of processes that died,
and must leave those of the living alone. Each process holds an exclusive
``flock`` on a file of its own for as long as it lives; the kernel drops the
lock when the process ends, however it ends, so a lock that can be taken
belongs to a dead process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path


# Limitation: the lock file of a process killed while no serial named it is
# never removed (an empty file per crash under instances/). Removing unheld
# files at start is unsafe while another process may sit between creating its
# file and locking it; a lock on the directory taken around both would allow it.
class FileLiveness:
    """This process's lock file, and the test of others' lock files."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        #: Names this process in pending serials; fits SQLite's signed 64-bit integers.
        self.instance = secrets.randbits(62)
        self._fd: int | None = None

    def hold(self) -> None:
        """Take this process's lock, once, before any serial names it.

        :raises OSError: the lock file cannot be made.
        """
        if self._fd is not None:
            return
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._path(self.instance), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def dead(self, instances: set[int]) -> set[int]:
        """Those of ``instances`` whose process is gone; their lock files are removed."""
        gone: set[int] = set()
        for instance in instances - {self.instance}:
            path = self._path(instance)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                gone.add(instance)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # its process holds the lock: alive
            gone.add(instance)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)
        return gone

    def close(self) -> None:
        """Give up the lock and remove the file; nothing may name this process after."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._path(self.instance).unlink()
        os.close(self._fd)
        self._fd = None

    def _path(self, instance: int) -> Path:
        return self._directory / f"{instance}.lock"
