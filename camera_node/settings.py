"""The camera node's session settings, each with its one default: `CameraConfig` (node.py),
`EdgeRequest` (session.py) and `EdgeLink` (link.py) take their defaults from `DEFAULTS`, and
the command line may read them here."""

from __future__ import annotations

from dataclasses import dataclass

from speculative.sampling import DEFAULT_Q_RULE, QRule, SamplingParams


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """How the device generates and how patiently it waits for the verifier."""

    sampling: SamplingParams = SamplingParams()
    gamma: int = 4  # draft tokens per round
    max_new_tokens: int = 48
    q_rule: QRule = DEFAULT_Q_RULE  # entries of q sent per drafted token: mass-sized (or a fixed q_top)
    draft_ahead: bool = True  # draft the next block while this one is verified (see docs/benchmarks.md)
    block_in_open: bool = True  # the OPEN carries the first block: one round trip and one forward fewer
    busy_poll_s: float = 0.02  # poll the socket this long for a verdict before sleeping (0 on battery)
    timeout_s: float = 10.0  # how long one reply of the verifier is waited for
    reconnect_s: float = 30.0  # how long a lost broker connection is tried again
    reopens: int = 3  # re-opens of a lost session within one round before the session fails


DEFAULTS = SessionSettings()
