"""The verifier's ERROR replies, and the ids a rejected message can still be matched by."""

from __future__ import annotations

from schemas import ErrorCode, ErrorMsg, WireError, encode
from schemas.messages import MsgType, unpack_array

from .protocol import SessionProtocol

# Failures of messages that did not authenticate: their ERROR names no session, so a forger
# cannot make a device's session end by sending garbage under its session id.
UNAUTHENTICATED = (ErrorCode.DECRYPT_FAILED, ErrorCode.REPLAY, ErrorCode.PLAINTEXT_REFUSED, ErrorCode.WRONG_DEVICE)


def error_reply(device_id: str, err: WireError, payload: bytes, down: str, *,
                session: SessionProtocol | None = None, topic_kind: str = "session") -> tuple[str, bytes]:
    """The ERROR answering `payload` from `device_id`, sealed with `session`'s codec when it
    is that device's session and the message authenticated."""
    session_id, seq = peek_ids(payload)
    if err.code in UNAUTHENTICATED and topic_kind == "session":
        session_id, seq = None, None
    msg = ErrorMsg(session_id, seq, int(err.code), str(err)[:400])
    if session is not None and session.device_id == device_id and err.code not in UNAUTHENTICATED:
        return down, session.codec.seal(down, msg)
    return down, encode(msg)


def peek_ids(payload: bytes) -> tuple[bytes | None, int | None]:
    """Best-effort (session_id, seq) of a rejected message, so the sender can match the error."""
    try:
        items = unpack_array(payload)
    except WireError:
        return None, None
    sid = items[2] if len(items) > 2 and isinstance(items[2], bytes) and len(items[2]) == 16 else None
    if len(items) > 1 and items[1] in (MsgType.SEALED, MsgType.SEALED_OPEN):
        return sid, None  # an envelope's seq is not the draft's: the error is for the session's current message
    seq = items[3] if len(items) > 3 and isinstance(items[3], int) and not isinstance(items[3], bool) \
        and 0 <= items[3] < 2**63 else None
    return sid, seq
