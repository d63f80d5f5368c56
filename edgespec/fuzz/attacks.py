"""The table of stateless attack kinds with their weights (`STATELESS`); the generators live in
`attacks_plain`, `attacks_sealed` and `attacks_foreign`, the message templates in `templates`."""

from __future__ import annotations

import random
from collections.abc import Callable

from .attacks_foreign import gen_foreign_session, gen_replay_captured, gen_spoof, gen_unknown_session
from .attacks_plain import (gen_bad_topic, gen_bad_type, gen_bad_version, gen_bitflip_plain, gen_features_overflow,
                            gen_features_plain, gen_field_range, gen_field_type, gen_oversize, gen_random_bytes,
                            gen_token_vocab, gen_truncated)
from .attacks_sealed import gen_resume_overflow, gen_sealed_open_semantic, gen_sealed_open_tamper
from .contract import Attack, FuzzContext, Identity

# Each generator returns one Attack for `me`, or None when it has nothing to send yet (no captured traffic).
Gen = Callable[[FuzzContext, Identity, random.Random], "Attack | None"]


STATELESS: dict[str, tuple[Gen, float]] = {
    "random_bytes": (gen_random_bytes, 8),
    "truncated": (gen_truncated, 8),
    "bitflip_plain": (gen_bitflip_plain, 6),
    "bad_version": (gen_bad_version, 4),
    "bad_type": (gen_bad_type, 5),
    "field_type": (gen_field_type, 12),
    "field_range": (gen_field_range, 10),
    "oversize": (gen_oversize, 4),
    "token_vocab": (gen_token_vocab, 4),
    "features_plain": (gen_features_plain, 5),
    "features_overflow": (gen_features_overflow, 0.5),
    "bad_topic": (gen_bad_topic, 4),
    "sealed_open_tamper": (gen_sealed_open_tamper, 7),
    "sealed_open_semantic": (gen_sealed_open_semantic, 8),
    "resume_overflow": (gen_resume_overflow, 0.3),
    "replay_captured": (gen_replay_captured, 5),
    "foreign_session": (gen_foreign_session, 5),
    "unknown_session": (gen_unknown_session, 3),
    "spoof": (gen_spoof, 6),
}
STATEFUL_KINDS = ("session_tamper", "session_replay", "session_inner", "session_plaintext",
                  "replay_open_after_close")
CAPS = {"resume_overflow": 5}  # each costs the verifier a long prefill today: enough to show it
