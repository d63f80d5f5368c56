"""Identifiers that become MQTT topic levels and broker usernames.

A device id is one whole topic level (`<prefix>/dev/{device}/down`) and the device's
Mosquitto username, which the ACL substitutes for `%u`. Mosquitto 2.0 refuses pattern ACLs only
for usernames containing `+` or `#`; a `/` would silently move the device into another part of
the topic tree, and `:` would break the password file. So ids are checked here, at
provisioning, against a deliberately conservative pattern: ASCII letters and digits first, then
letters, digits, `_`, `.` and `-`, at most 64 characters.
"""

from __future__ import annotations

import unicodedata

from schemas.topics import ID_PATTERN, MAX_ID_LEN, PROTOCOL  # the id rule, declared once

_TOPIC_SPECIAL = {"+": "'+' (MQTT single-level wildcard)",
                  "#": "'#' (MQTT multi-level wildcard)",
                  "/": "'/' (MQTT topic level separator)",
                  "\0": "NUL (forbidden in MQTT strings)",
                  ":": "':' (Mosquitto password-file separator)",
                  "$": "'$' (reserved for broker topics)"}


class InvalidIdentifier(ValueError):
    """An id that cannot be used as a topic level or broker username."""

    def __init__(self, kind: str, value: object, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(
            f"invalid {kind} id {value!r}: {reason}; use 1-{MAX_ID_LEN} characters from "
            f"A-Z a-z 0-9 _ . - starting with a letter or digit (e.g. 'cam-lobby-01')"
        )


class InvalidDeviceId(InvalidIdentifier):
    """A device id refused at provisioning (see `validate_device_id`)."""


class InvalidVerifierId(InvalidIdentifier):
    """A verifier id refused (see `validate_verifier_id`)."""


class InvalidTopicPrefix(ValueError):
    """A topic prefix that is not a plain, wildcard-free MQTT topic."""


def _why_invalid(value: object) -> str | None:
    """The first reason `value` is not a safe id, or None when it is one."""
    if not isinstance(value, str):
        return f"must be a str, not {type(value).__name__}"
    if value == "":
        return "is empty"
    if len(value) > MAX_ID_LEN:
        return f"is {len(value)} characters long (at most {MAX_ID_LEN})"
    for char, name in _TOPIC_SPECIAL.items():
        if char in value:
            return f"contains {name}"
    for char in value:
        if char.isspace():
            return f"contains whitespace {char!r}"
        if unicodedata.category(char).startswith("C"):
            return f"contains control or unassigned character {char!r}"
    if not value.isascii():
        return "contains non-ASCII characters"
    if ID_PATTERN.fullmatch(value) is None:
        return "must start with a letter or digit and contain only A-Z a-z 0-9 _ . -"
    return None


def is_valid_id(value: object) -> bool:
    """True when `value` passes `validate_device_id` (same rules for every role)."""
    return _why_invalid(value) is None


def validate_device_id(value: object) -> str:
    """Return `value` unchanged if it is a safe device id, else raise `InvalidDeviceId`."""
    reason = _why_invalid(value)
    if reason is not None:
        raise InvalidDeviceId("device", value, reason)
    assert isinstance(value, str)
    return value


def validate_verifier_id(value: object) -> str:
    """Return `value` unchanged if it is a safe verifier id, else raise `InvalidVerifierId`."""
    reason = _why_invalid(value)
    if reason is not None:
        raise InvalidVerifierId("verifier", value, reason)
    assert isinstance(value, str)
    return value


def validate_username(value: object, *, role: str = "user") -> str:
    """Return `value` if it is a safe broker username for `role` (dashboards, services)."""
    reason = _why_invalid(value)
    if reason is not None:
        raise InvalidIdentifier(role, value, reason)
    assert isinstance(value, str)
    return value


def validate_topic_prefix(prefix: object) -> str:
    """Return `prefix` if it is a non-empty topic of plain levels (no wildcards, no `$`).

    Levels may contain anything an id may contain; an empty level (`a//b`, a leading or
    trailing `/`) is refused because ACL patterns would not match it the way people expect.
    """
    if not isinstance(prefix, str) or prefix == "":
        raise InvalidTopicPrefix(
            f"topic prefix {prefix!r} must be a non-empty str like {PROTOCOL!r}")
    for level in prefix.split("/"):
        reason = _why_invalid(level)
        if reason is not None:
            raise InvalidTopicPrefix(
                f"topic prefix {prefix!r}: level {level!r} {reason}; "
                "use levels of A-Z a-z 0-9 _ . - separated by single '/'"
            )
    return prefix
