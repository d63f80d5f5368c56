"""Admission: what an uplink message must pass before it reaches a session.

In order: its topic must parse, its device must be within its rate (limits.py), its payload
must decode under the wire limits, and a session OPEN must fit the target (tokenizer,
vocabulary, positions, vision features), its DRAFTs the session (gamma, q). A sealed OPEN
must come from a provisioned device, under a current verifier key, fresh and never seen;
it chooses the session's codec (security/session_codec.py). Every refusal is a `WireError`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from schemas import DraftMsg, ErrorCode, ErrorMsg, SealedOpen, SessionOpen, Topics, WireError, decode, encode
from schemas.messages import Message
from schemas.topics import Uplink
from security.freshness import OpenFreshness, StaleOpen
from security.keys import PublicKeyLike, UnknownKeyId, VerifierKeyRing
from security.registry import RegistryError
from security.session_codec import SealedCodec
from speculative.models import LoadedLM
from speculative.sampling import SparseQ

from .limits import DeviceRateLimiter
from .settings import VerifierSettings
from .stats import VerifierStats

log = logging.getLogger("edgespec.verifier")
Reply = tuple[str, bytes]
BUSY_REASON = WireError(ErrorCode.BUSY, "").reason


class KeySource(Protocol):
    """Where the verifier's keys come from (`security.registry.FleetRegistry`)."""

    def public_key(self, device_id: str) -> PublicKeyLike | None: ...

    def verifier_keys(self) -> VerifierKeyRing: ...


@dataclass
class VerifierCrypto:
    """Keys for end-to-end encrypted sessions, from a `security.registry.FleetRegistry`:
    `public_key(device_id)` gives a device's provisioned X25519 key (or None) and
    `verifier_keys()` the verifier's key ring, both re-read when their files change, so
    flashing, revoking and key rotation take effect without a restart. With `require`,
    plaintext session messages are refused."""

    registry: KeySource
    require: bool = True
    # Sealed OPENs' freshness (security/freshness.py): their timestamp window and the record of
    # opens seen, a file shared across restarts and a pool when given one. None: in memory.
    freshness: OpenFreshness | None = None


class Gate:
    """The checks before decoding: the topic, and the device's rate."""

    def __init__(self, settings: VerifierSettings, topics: Topics, stats: VerifierStats):
        self.settings = settings
        self.topics = topics
        self.stats = stats
        self.limiter = DeviceRateLimiter(settings.device_rate, settings.device_burst)

    def admit(self, topic: str) -> Uplink | list[Reply]:
        """The parsed uplink, or what answers a message refused here (nothing, or a BUSY)."""
        try:
            uplink = self.topics.parse_uplink(topic)
        except WireError as bad_topic:
            self.stats.refused(bad_topic)
            return []  # no device to answer
        allowed, tell = self.limiter.admit(uplink.device_id)
        if allowed:
            return uplink
        if not tell:  # a flood: count it and build nothing
            self.stats.rejected[BUSY_REASON] += 1
            return []
        err = WireError(ErrorCode.BUSY, f"more than {self.settings.device_rate:g} messages per second from "
                        f"{uplink.device_id}: dropped (told at most once a second)")
        self.stats.refused(err)
        # No session id: the drop must not end a session (the device's timeout re-sends).
        return [(self.topics.down(uplink.device_id), encode(ErrorMsg(None, None, int(err.code), str(err))))]


class Checks:
    """What a session's messages must fit in the target model."""

    def __init__(self, lm: LoadedLM):
        self.lm = lm

    def open(self, msg: SessionOpen) -> tuple[list[int], np.ndarray | None]:
        """The OPEN's context (prompt and resumed tokens) and its vision features."""
        if msg.tokenizer_fp != self.lm.fingerprint:
            raise WireError(
                ErrorCode.TOKENIZER_MISMATCH,
                f"draft tokenizer {msg.tokenizer_fp.hex()} differs from the target's {self.lm.fingerprint.hex()}:"
                " draft and target must share one tokenizer",
            )
        context = msg.prompt_ids + msg.generated_ids
        if len(msg.generated_ids) >= msg.max_new_tokens:
            raise WireError(ErrorCode.OUT_OF_RANGE, f"{len(msg.generated_ids)} generated tokens resumed, but "
                            f"max_new_tokens is {msg.max_new_tokens}: nothing is left to generate")
        if not msg.prompt_ids:
            raise WireError(ErrorCode.OUT_OF_RANGE, "prompt_ids must hold at least one token")
        self.tokens(context, "prompt")
        self.tokens(msg.stop_token_ids, "stop_token_ids")
        features = self.features(msg)
        prefix = 0 if features is None else features.shape[0]
        needed = prefix + len(msg.prompt_ids) + msg.max_new_tokens + msg.gamma + 1
        if needed > self.lm.max_positions:
            raise WireError(
                ErrorCode.OUT_OF_RANGE,
                f"prompt + max_new_tokens need {needed} positions, the target has {self.lm.max_positions}",
            )
        return context, features

    def tokens(self, tokens: list[int], name: str) -> None:
        vocab = self.lm.vocab_size
        bad = [t for t in tokens if t >= vocab]
        if bad:
            raise WireError(ErrorCode.OUT_OF_RANGE, f"{name} holds token id {bad[0]} >= vocabulary size {vocab}")

    def features(self, msg: SessionOpen) -> np.ndarray | None:
        if msg.features is None:
            return None
        projector = self.lm.projector
        if projector is None:
            raise WireError(ErrorCode.BAD_FEATURES, "this target takes no vision features")
        array = msg.features.to_array()
        expected = tuple(projector.feature_shape)
        if array.shape != expected:
            raise WireError(ErrorCode.BAD_FEATURES, f"features have shape {array.shape}, the target expects {expected}")
        return array

    def draft(self, gamma: int, greedy: bool, msg: DraftMsg) -> SparseQ | None:
        """A block of a session opened with `gamma`; its q (None for a greedy session)."""
        if len(msg.tokens) > gamma:
            raise WireError(ErrorCode.OUT_OF_RANGE, f"{len(msg.tokens)} drafted tokens, the session opened with "
                            f"gamma {gamma}")
        self.tokens(msg.tokens, "tokens")
        if msg.q is None:
            if not greedy and msg.tokens:
                raise WireError(ErrorCode.MALFORMED, "a sampled session's draft must carry q")
            return None
        ids, weights = msg.q.arrays(len(msg.tokens))
        if ids.size and int(ids.max()) >= self.lm.vocab_size:
            raise WireError(ErrorCode.OUT_OF_RANGE, f"q holds token id {int(ids.max())} >= vocabulary size")
        q = SparseQ(torch.from_numpy(ids), torch.from_numpy(weights))
        if msg.tokens and bool((q.prob_of(torch.tensor(msg.tokens)) <= 0).any()):
            raise WireError(ErrorCode.OUT_OF_RANGE, "a draft token has probability 0 under its own q")
        return None if greedy else q


class SealedOpens:
    """Sealed OPENs: the keys they need, their freshness, and the record against replay."""

    def __init__(self, crypto: VerifierCrypto | None, settings: VerifierSettings, stats: VerifierStats):
        self.crypto = crypto
        self.settings = settings
        self.stats = stats
        self.freshness = crypto.freshness if crypto is not None and crypto.freshness is not None \
            else OpenFreshness()
        self._seen: OrderedDict[bytes, None] = OrderedDict()  # sealed OPENs accepted (32 bytes each)

    def plaintext_allowed(self) -> None:
        """Raise PLAINTEXT_REFUSED when this verifier takes only encrypted sessions."""
        if self.crypto is not None and self.crypto.require:
            raise WireError(ErrorCode.PLAINTEXT_REFUSED, "this verifier accepts only encrypted sessions")

    def open(self, device_id: str, topic: str, msg: SealedOpen, *, held: bool) -> tuple[SealedCodec, SessionOpen]:
        """The session's codec and the OPEN inside `msg`; `held`: a session of its id is held
        (a re-open with new keys, not a replay)."""
        if self.crypto is None:
            raise WireError(ErrorCode.DECRYPT_FAILED, "this verifier has no keys for encrypted sessions")
        if not held and msg.ciphertext[:32] in self._seen:
            raise WireError(ErrorCode.REPLAY, "this sealed OPEN was already used; a device opens with fresh keys")
        device_pub, ring = self._keys(self.crypto.registry, device_id)
        try:
            verifier_key = ring.get(msg.verifier_key_id)
        except UnknownKeyId:
            raise WireError(ErrorCode.DECRYPT_FAILED, f"verifier key {msg.verifier_key_id!r} is unknown or retired;"
                            " re-provision the device with the current verifier key") from None
        codec, inner = SealedCodec.for_verifier(verifier_key, device_pub, device_id, topic, msg)
        self._seen[msg.ciphertext[:32]] = None  # authenticated: remember it (bounded)
        while len(self._seen) > self.settings.seen_opens_kept:
            self._seen.popitem(last=False)
        open_msg: Message = decode(inner, self.settings.limits)
        if not isinstance(open_msg, SessionOpen) or open_msg.session_id != msg.session_id:
            raise WireError(ErrorCode.MALFORMED, "a sealed OPEN must hold an OPEN for the same session id")
        try:  # fresh: inside the time window and never seen, also before a restart or by a peer
            self.freshness.check(device_id, msg.ephemeral_pub, open_msg.sent_at_ms)
        except StaleOpen as exc:
            self.stats.stats[f"opens_refused_{exc.reason}"] += 1
            raise WireError(ErrorCode.REPLAY, str(exc)) from None
        return codec, open_msg

    @staticmethod
    def _keys(registry: KeySource, device_id: str) -> tuple[PublicKeyLike, VerifierKeyRing]:
        try:
            device_pub = registry.public_key(device_id)
            ring = registry.verifier_keys()
        except RegistryError as exc:
            log.error("fleet registry: %s", exc)
            raise WireError(ErrorCode.UNKNOWN_DEVICE, f"no usable key for device {device_id!r} here") from None
        if device_pub is None:
            raise WireError(ErrorCode.UNKNOWN_DEVICE, f"device {device_id!r} is not provisioned here (edgespec flash)")
        return device_pub, ring
