"""One error type for bad input, with a machine-readable code and a message a person can act on."""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Codes carried by ERROR messages and used as rejection counter keys."""

    MALFORMED = 1  # not msgpack, not an array, wrong field types
    BAD_VERSION = 2
    UNKNOWN_TYPE = 3
    OVERSIZE = 4  # a payload or field over its limit
    OUT_OF_RANGE = 5  # a value outside its allowed range (token id, gamma, temperature ...)
    BAD_TOPIC = 6  # a topic outside the layout, or a device id unsafe in topics
    UNKNOWN_SESSION = 7
    WRONG_DEVICE = 8  # a session id used from another device's topic
    BAD_SEQUENCE = 9  # a stale or out-of-order sequence number
    TOKENIZER_MISMATCH = 10
    BAD_FEATURES = 11
    DECRYPT_FAILED = 12
    REPLAY = 13
    BUSY = 14  # the verifier is at its session limit
    INTERNAL = 15
    TIMEOUT = 16
    UNKNOWN_DEVICE = 17  # no provisioned public key for this device id
    PLAINTEXT_REFUSED = 18  # this verifier requires encrypted sessions


class WireError(ValueError):
    """Input that breaks the contract. `code` says which rule; the message says what to fix."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code.name.lower()}: {message}")
        self.code = code
        self.detail = message

    @property
    def reason(self) -> str:
        """Counter key, e.g. 'out_of_range'."""
        return self.code.name.lower()
