"""The verifier's settings: one keyword-only dataclass, one default for each setting.

`VerifierSettings()` holds the defaults; the CLI (`edgespec verifier`) builds one from its
flags, whose defaults it reads from `DEFAULTS` here, as do the other commands that start
verifiers (edgespec/config.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import Limits
from schemas.messages import DEFAULT_LIMITS


@dataclass(frozen=True, kw_only=True)
class VerifierSettings:
    """Everything that tunes one verifier; `max_batch` 1 turns batching off."""

    verifier_id: str = "verifier-1"
    # The session table: at most this many sessions, and this many per device (a device
    # opening more gives up its own oldest); idle ones expire; beyond `max_kv_bytes` of KV
    # cache the least recently used sessions are evicted.
    max_sessions: int = 1024
    max_sessions_per_device: int = 8
    session_idle_s: float = 300.0
    max_kv_bytes: int = 8 << 30
    # Admission: uplink messages per second per device (a session sends one per round), in
    # bursts of up to `device_burst`; the wire limits every message is decoded under.
    device_rate: float = 1000.0
    device_burst: int = 2000
    limits: Limits = DEFAULT_LIMITS
    # Batching: blocks that arrive within `batch_window_s` (while several sessions are held)
    # are verified together, at most `max_batch` messages a batch.
    max_batch: int = 64
    batch_window_s: float = 0.002
    # After each reply keep polling the sockets this long instead of sleeping (0: off), so the
    # next round's forward runs on a warm CPU.
    busy_poll_s: float = 0.02
    max_inbox: int = 10_000  # uplink messages queued before the verifier sheds them (`overloaded`)
    session_expiry_s: int = 60  # how long the broker queues a disconnected verifier's session traffic
    # Memory bounds: sealed OPENs remembered against replay (32 bytes each); finished
    # sessions whose last verdict answers a redelivered last DRAFT.
    seen_opens_kept: int = 100_000
    finished_kept: int = 4096

    @property
    def batching(self) -> bool:
        """Whether blocks that arrive together are verified in one forward."""
        return self.max_batch > 1


DEFAULTS = VerifierSettings()
