"""Captions made on the device alone, kept until a verifier has checked them.

When the camera is edge-only (its link is down, no verifier is online, or its policy says so)
`caption_offline` writes the caption with the draft model alone, keeping each token's q. The
caption is published at once marked unverified (`"verified": false`), or when the broker is
back if it was unreachable, and waits in `OfflineCaptions`. Once a verifier is reachable,
`verify_later` opens an ordinary session whose draft blocks are the recorded caption (up to
`MAX_REPLAY_GAMMA` tokens in the OPEN, scored in the prefill's forward): the verifier accepts
its longest right prefix, corrects the first wrong token, and the session carries on drafting
live. The verified caption, published with `"replaces"` naming the unverified one, is the
target's own (greedy: token-identical; sampled: distributed as the target's).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field, replace

from schemas.messages import DEFAULT_LIMITS
from speculative.draft import Drafter
from speculative.loop import StopRule
from speculative.models import LoadedLM
from speculative.offline import OfflineDraft, ReplayDrafter, generate_edge_only

from .link import EdgeLink
from .session import EdgeOutcome, EdgeRequest, run_edge_session, wire_features

log = logging.getLogger("edgespec.camera")
MAX_REPLAY_GAMMA = DEFAULT_LIMITS.max_gamma  # recorded tokens the OPEN may carry
DEFAULT_BACKLOG = 256


@dataclass
class PendingCaption:
    """One unverified caption: what was asked, what the draft wrote, what to publish again."""

    offline_id: str  # the session id (hex) its unverified result was published under
    req: EdgeRequest
    recording: OfflineDraft
    text: str
    extra: dict = field(default_factory=dict)  # the event's facts, as published
    created: float = field(default_factory=time.time)
    published: bool = False  # whether the unverified result reached the broker
    tries: int = 0


class OfflineCaptions:
    """The backlog of unverified captions, oldest first; bounded (the oldest is dropped, and
    counted, when it is full)."""

    def __init__(self, limit: int = DEFAULT_BACKLOG):
        if limit < 1:
            raise ValueError("the offline backlog holds at least one caption")
        self.limit = limit
        self._items: collections.deque[PendingCaption] = collections.deque()
        self.dropped = 0
        self.verified = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: PendingCaption) -> None:
        if len(self._items) >= self.limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)

    def oldest(self) -> PendingCaption | None:
        return self._items[0] if self._items else None

    def done(self, item: PendingCaption) -> None:
        """`item` was verified (or replaced): it leaves the backlog."""
        self._items.remove(item)
        self.verified += 1

    def unpublished(self) -> list[PendingCaption]:
        return [i for i in self._items if not i.published]


def caption_offline(lm: LoadedLM, req: EdgeRequest) -> OfflineDraft:
    """The draft model alone on the request, sampling as a session would, on the features as
    a verifier will later see them (fp16), so its q is the one to verify against."""
    _, features = wire_features(req.features)
    drafter = Drafter(lm, req.sampling, seed=req.seed, q_rule=req.q_rule)
    return generate_edge_only(drafter, list(req.prompt_ids), features, StopRule(req.max_new_tokens, req.stops(lm)))


def new_offline_id() -> str:
    return os.urandom(16).hex()


async def verify_later(link: EdgeLink, lm: LoadedLM, item: PendingCaption) -> EdgeOutcome:
    """A session that has the verifier check `item`'s recorded caption and finish it."""
    req = item.req
    gamma = max(1, min(MAX_REPLAY_GAMMA, len(item.recording.tokens)))

    def live() -> Drafter:  # after the first correction: the draft model, on a stream of its own
        return Drafter(lm, req.sampling, seed=(req.seed + 1) % 2**63, q_rule=req.q_rule)

    drafter = ReplayDrafter(item.recording, live, live_gamma=req.gamma)
    session_req = replace(req, gamma=gamma, controller=None, draft_ahead=False)
    outcome = await run_edge_session(link, lm, session_req, drafter=drafter)
    outcome.extra.update({"replaces": item.offline_id, "replayed_accepted": drafter.replayed_accepted,
                          "offline_tokens": len(item.recording.tokens)})
    return outcome


__all__ = ["MAX_REPLAY_GAMMA", "OfflineCaptions", "PendingCaption", "caption_offline", "new_offline_id",
           "verify_later"]
