"""The result message dashboards read: UTF-8 JSON on `{prefix}/dev/{device}/result`.

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
    def from_json(cls, payload: bytes) -> "ResultMsg":
        if len(payload) > MAX_RESULT_BYTES:
            raise WireError(ErrorCode.OVERSIZE, f"result is {len(payload)} bytes, limit {MAX_RESULT_BYTES}")
        try:
            body = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WireError(ErrorCode.MALFORMED, f"result is not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("v") != PROTOCOL_VERSION:
            raise WireError(ErrorCode.BAD_VERSION, "result must be a JSON object with v = 1")
        types = {"device_id": str, "session_id": str, "ts": (int, float), "text": str, "token_ids": list,
                 "rounds": int, "acceptance_rate": (int, float), "mean_accepted": (int, float),
                 "bytes_up": int, "bytes_down": int}
        for name, kind in types.items():
            if not isinstance(body.get(name), kind) or isinstance(body.get(name), bool):
                raise WireError(ErrorCode.MALFORMED, f"result field '{name}' missing or of the wrong type")
        extra = body.get("extra", {})
        if not isinstance(extra, dict):
            raise WireError(ErrorCode.MALFORMED, "result field 'extra' must be an object")
        return cls(**{name: body[name] for name in types}, extra=extra)
