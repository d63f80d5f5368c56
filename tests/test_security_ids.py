"""Device, verifier and topic-prefix validation (security/ids.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from security.ids import (MAX_ID_LEN, InvalidDeviceId, InvalidIdentifier, InvalidTopicPrefix,
                          InvalidVerifierId, is_valid_id, validate_device_id,
                          validate_topic_prefix, validate_username, validate_verifier_id)


@pytest.mark.parametrize("good", ["cam-1", "CAM_lobby.02", "a", "0", "x" * MAX_ID_LEN,
                                  "verifier-1", "a.b-c_d"])
def test_valid_ids_are_returned_unchanged(good: str) -> None:
    assert validate_device_id(good) == good
    assert validate_verifier_id(good) == good


@pytest.mark.parametrize("bad, why", [
    ("", "empty"),
    ("cam+1", "'+'"),
    ("cam#", "'#'"),
    ("dev/cam", "'/'"),
    ("cam\0", "NUL"),
    ("cam 1", "whitespace"),
    ("cam\t1", "whitespace"),
    ("cam\n", "whitespace"),
    ("cam\x07", "control"),
    ("cam:1", "':'"),
    ("$SYS", "'$'"),
    ("x" * (MAX_ID_LEN + 1), "characters long"),
    ("-cam", "start with a letter or digit"),
    (".hidden", "start with a letter or digit"),
    ("kamera-ü", "non-ASCII"),
    ("cam\u200b", "control"),  # zero-width space: category Cf
    ("cam*", "only A-Z"),
])
def test_unsafe_ids_are_refused_with_the_reason(bad: str, why: str) -> None:
    with pytest.raises(InvalidDeviceId, match="invalid device id") as info:
        validate_device_id(bad)
    assert why in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidVerifierId, match="invalid verifier id"):
        validate_verifier_id(bad)


def test_non_str_is_refused() -> None:
    with pytest.raises(InvalidDeviceId, match="must be a str"):
        validate_device_id(b"cam-1")
    with pytest.raises(InvalidIdentifier, match="dashboard"):
        validate_username(None, role="dashboard")


@given(st.text(max_size=80))
def test_accepted_ids_are_safe_topic_levels(value: str) -> None:
    if is_valid_id(value):
        assert validate_device_id(value) == value
        assert not set(value) & set("+#/\0:$ \t\r\n")
        assert 1 <= len(value) <= MAX_ID_LEN and value.isascii()
    else:
        with pytest.raises(InvalidDeviceId):
            validate_device_id(value)


def test_topic_prefix() -> None:
    assert validate_topic_prefix("edgespec/v1") == "edgespec/v1"
    assert validate_topic_prefix("site-3/edgespec/v1") == "site-3/edgespec/v1"
    for bad in ("", "/edgespec", "edgespec/", "a//b", "edgespec/+", "edgespec/#", "$SYS/x",
                "edge spec"):
        with pytest.raises(InvalidTopicPrefix):
            validate_topic_prefix(bad)
