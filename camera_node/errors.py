"""What a device session can fail with (camera_node.link re-exports them)."""

from __future__ import annotations

from schemas import ErrorCode, ErrorMsg


class VerifierTimeout(TimeoutError):
    """No verifier answered in time."""


class VerifierRejected(RuntimeError):
    """The verifier answered with an ERROR."""

    def __init__(self, error: ErrorMsg):
        try:
            name = ErrorCode(error.code).name.lower()
        except ValueError:
            name = f"code {error.code}"
        super().__init__(f"verifier rejected the message ({name}): {error.message}")
        self.error = error


class VerifierLost(VerifierTimeout):
    """The verifier holding the session announced it is offline (its Last Will), or the
    connection to the broker was lost and re-established meanwhile."""


class BrokerUnreachable(ConnectionError):
    """The broker connection was lost and could not be re-established in time."""


class ResyncFailed(RuntimeError):
    """The verifier could not take the session back after a RESYNC."""
