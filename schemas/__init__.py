"""The wire contract: versioned msgpack messages, the topic layout and strict decoding.

See schemas/README.md for the byte-level description a firmware in any language can follow.
"""

from .errors import ErrorCode, WireError
from .messages import (
    PROTOCOL_VERSION,
    Close,
    DraftMsg,
    ErrorMsg,
    Features,
    Limits,
    MsgType,
    Opened,
    Queued,
    Resync,
    Sealed,
    SealedOpen,
    SessionOpen,
    SparseQWire,
    VerdictMsg,
    decode,
    encode,
)
from .results import ResultMsg
from .topics import PROTOCOL, Topics

__all__ = [
    "PROTOCOL",
    "PROTOCOL_VERSION",
    "Close",
    "DraftMsg",
    "ErrorCode",
    "ErrorMsg",
    "Features",
    "Limits",
    "MsgType",
    "Opened",
    "Queued",
    "ResultMsg",
    "Resync",
    "Sealed",
    "SealedOpen",
    "SessionOpen",
    "SparseQWire",
    "Topics",
    "VerdictMsg",
    "WireError",
    "decode",
    "encode",
]
