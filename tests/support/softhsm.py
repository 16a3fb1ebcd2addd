"""A private SoftHSM2 for one test session: its own SOFTHSM2_CONF and token directory.

SoftHSM reads ``SOFTHSM2_CONF`` each time the module is initialised, and a
process initialises a PKCS#11 module once for all its key stores, so the test
process points the variable at one temporary configuration for the whole
session. Subprocesses (the CLI, a live server) get the same file through their
environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass(frozen=True)
class SoftHsm:
    """Where this session's SoftHSM keeps its configuration and tokens."""

    module: str
    conf: Path
    token_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment a subprocess needs to share these tokens."""
        return {"SOFTHSM2_CONF": str(self.conf)}


def write_softhsm_conf(directory: Path) -> SoftHsm:
    """Make a token directory and a configuration that uses only it."""
    token_dir = directory / "tokens"
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )
    return SoftHsm(SOFTHSM_MODULE, conf, token_dir)


_SESSION: list[SoftHsm] = []


@pytest.fixture(scope="session", name="softhsm")
def softhsm_fixture(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """This session's SoftHSM, with SOFTHSM2_CONF set in the test process.

    Test modules import this fixture, so pytest may hold several copies of it;
    all of them hand out the first one made, because the process initialises
    the module, and reads the configuration, for all of them.
    """
    if not Path(SOFTHSM_MODULE).exists():
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    if not _SESSION:
        hsm = write_softhsm_conf(tmp_path_factory.mktemp("softhsm"))
        os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
        _SESSION.append(hsm)
    return _SESSION[0]
