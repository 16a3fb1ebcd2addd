"""Identifiers that go into URLs and onto clients' command lines."""

from __future__ import annotations

import base64

from acme_mt.models import new_hmac_key, new_id


def test_ids_are_128_bit_base64url_and_never_start_with_a_dash() -> None:
    ids = {new_id() for _ in range(5000)}

    assert len(ids) == 5000
    assert not any(value.startswith("-") for value in ids)
    assert all(len(base64.urlsafe_b64decode(value + "==")) == 16 for value in ids)


def test_eab_mac_keys_are_256_bits_and_never_print_with_a_leading_dash() -> None:
    keys = {new_hmac_key() for _ in range(5000)}

    assert len(keys) == 5000
    assert all(len(key) == 32 for key in keys)
    assert not any(base64.urlsafe_b64encode(key).startswith(b"-") for key in keys)
