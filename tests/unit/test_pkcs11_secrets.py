"""Token PINs: configured sources, generation into a 0600 file, and never showing a PIN."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from acme_mt.errors import ConfigError
from acme_mt.keystores.secrets import PINS_ENV, SECRETS_FILE, SO_PIN_ENV, PinStore, TokenPins


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pins_for_new_token_generates_and_saves_0600_before_use(tmp_path: Path) -> None:
    store = PinStore(tmp_path, {})
    pins = store.pins_for_new_token("t0001")

    saved = json.loads((tmp_path / SECRETS_FILE).read_text())
    assert saved == {"t0001": {"user": pins.user, "so": pins.so}}
    assert _mode(tmp_path / SECRETS_FILE) == 0o600
    assert len(pins.user) >= 32 and pins.so and pins.so != pins.user
    assert PinStore(tmp_path, {}).pins("t0001") == pins
    assert store.pins_for_new_token("t0001") == pins  # a retry reuses, never regenerates


def test_environment_wins_over_pin_file_then_generated(tmp_path: Path) -> None:
    pin_file = tmp_path / "pins.toml"
    pin_file.write_text('t0001 = "from-file"\n[t0002]\nuser = "file-two"\nso = "file-so"\n')
    pin_file.chmod(0o600)
    environ = {PINS_ENV: json.dumps({"t0001": "from-env"})}
    store = PinStore(tmp_path / "data", environ, pin_file)
    PinStore(tmp_path / "data", {}).pins_for_new_token("t0003")

    assert store.pins("t0001") == TokenPins("from-env", None)
    assert store.pins("t0002") == TokenPins("file-two", "file-so")
    assert store.pins("t0003") is not None
    assert store.pins("t0004") is None


def test_configured_user_pin_is_never_copied_to_the_generated_file(tmp_path: Path) -> None:
    store = PinStore(tmp_path, {PINS_ENV: '{"t0001": "configured-pin"}'})
    pins = store.pins_for_new_token("t0001")

    assert pins.user == "configured-pin" and pins.so
    text = (tmp_path / SECRETS_FILE).read_text()
    assert "configured-pin" not in text
    assert json.loads(text) == {"t0001": {"so": pins.so}}


def test_shared_so_pin_from_environment_or_file(tmp_path: Path) -> None:
    so_file = tmp_path / "so.pin"
    so_file.write_text("file-so-pin\n")
    from_env = PinStore(tmp_path / "a", {SO_PIN_ENV: "env-so-pin"}, so_pin_file=so_file)
    from_file = PinStore(tmp_path / "b", {}, so_pin_file=so_file)

    assert from_env.pins_for_new_token("t1").so == "env-so-pin"
    assert from_file.pins_for_new_token("t1").so == "file-so-pin"
    assert "so" not in json.loads((tmp_path / "b" / SECRETS_FILE).read_text())["t1"]


def test_forget_drops_only_that_partition(tmp_path: Path) -> None:
    store = PinStore(tmp_path, {})
    store.pins_for_new_token("t1")
    kept = store.pins_for_new_token("t2")
    store.forget("t1")

    assert store.pins("t1") is None
    assert store.pins("t2") == kept
    assert not store.has_generated("t1") and store.has_generated("t2")


@pytest.mark.parametrize(
    "text",
    ['{"t1": 42}', '{"t1": {"user": "secret-value", "admin": "x"}}', '["secret-value"]', "{{"],
)
def test_malformed_pins_raise_config_error_without_echoing(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PinStore(tmp_path, {PINS_ENV: text})
    assert "secret-value" not in str(caught.value)
    assert PINS_ENV in str(caught.value)


def test_pin_file_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pin_file = tmp_path / "pins.json"
    pin_file.write_text('{"t1": "hunter22"}')
    os.chmod(pin_file, 0o644)
    PinStore(tmp_path, {}, pin_file)

    assert "readable by others" in caplog.text
    assert "hunter22" not in caplog.text


def test_token_pins_repr_shows_no_pin() -> None:
    assert "hunter22" not in repr(TokenPins("hunter22", "so-hunter22"))
