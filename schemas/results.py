"""The result messages dashboards read: UTF-8 JSON on `{prefix}/dev/{device}/result` (the
device's own claim) and `{prefix}/dev/{device}/verified` (what a verifier verified; only
verifiers may publish there).

Session messages are msgpack for size; results are JSON because dashboards (browsers over
websockets, Home Assistant, Node-RED) parse it natively. `v` comes first, fields are
append-only, and the decoder is as strict as the msgpack one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ErrorCode, WireError
from .messages import PROTOCOL_VERSION

MAX_RESULT_BYTES = 64 * 1024


def _json_object(payload: bytes, what: str, types: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of a result-like message, bounded, versioned and with ``types``' fields
    present and of their types (bool is never an int here); a WireError otherwise."""
    if len(payload) > MAX_RESULT_BYTES:
        raise WireError(ErrorCode.OVERSIZE, f"{what} is {len(payload)} bytes, limit {MAX_RESULT_BYTES}")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(ErrorCode.MALFORMED, f"{what} is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != PROTOCOL_VERSION:
        raise WireError(ErrorCode.BAD_VERSION, f"{what} must be a JSON object with v = 1")
    for name, kind in types.items():
        if not isinstance(body.get(name), kind) or isinstance(body.get(name), bool):
            raise WireError(ErrorCode.MALFORMED, f"{what} field '{name}' missing or of the wrong type")
    return body


@dataclass(frozen=True)
class ResultMsg:
    device_id: str
    session_id: str  # hex
    ts: float  # Unix time, seconds, when the last verdict arrived
    text: str
    token_ids: list[int]
    rounds: int
    acceptance_rate: float
    mean_accepted: float
    bytes_up: int
    bytes_down: int
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the event's box, feature bytes

    def to_json(self) -> bytes:
        body = {"v": PROTOCOL_VERSION, **asdict(self)}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> ResultMsg:
        types = {"device_id": str, "session_id": str, "ts": (int, float), "text": str, "token_ids": list,
                 "rounds": int, "acceptance_rate": (int, float), "mean_accepted": (int, float),
                 "bytes_up": int, "bytes_down": int}
        body = _json_object(payload, "result", types)
        extra = body.get("extra", {})
        if not isinstance(extra, dict):
            raise WireError(ErrorCode.MALFORMED, "result field 'extra' must be an object")
        return cls(**{name: body[name] for name in types}, extra=extra)


@dataclass(frozen=True)
class VerifiedMsg:
    """What a verifier verified when a session finished, published by the verifier itself on
    `{prefix}/dev/{device}/verified` (never retained): the generated token ids it committed
    and their text in the target's tokenizer. `resumed`: how many of the first token ids the
    device supplied when it (re-)opened the session here (after a RESYNC or a failover) and
    this verifier did not verify; 0 means every token was verified by it. A dashboard shows a
    device's result as verified when a VerifiedMsg of the same device (topic), session id and
    token ids arrived with resumed 0."""

    device_id: str
    session_id: str  # hex
    verifier_id: str
    ts: float
    token_ids: list[int]
    text: str
    resumed: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"v": PROTOCOL_VERSION, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> VerifiedMsg:
        types = {"device_id": str, "session_id": str, "verifier_id": str, "ts": (int, float),
                 "token_ids": list, "text": str, "resumed": int}
        body = _json_object(payload, "verified result", types)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in body["token_ids"]):
            raise WireError(ErrorCode.MALFORMED, "verified result field 'token_ids' must hold integers")
        return cls(**{name: body[name] for name in types})
