"""Stateful attackers: real encrypted sessions of their own, driven just far enough to reach the
verifier's checks behind decryption, mixed with hostile sealed messages."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas import (
    Close, DraftMsg, ErrorCode, ErrorMsg, Opened, Resync, Sealed, SparseQWire, VerdictMsg, WireError, decode,
    encode,
)
from schemas.messages import PROTOCOL_VERSION, Message

from .attacks_sealed import _seal_open
from .contract import NO_REPLY, OPENED, RESYNC, VERDICT, Attack, Captured, FuzzContext, _exp, fence, reason
from .tally import Attacker, Budget
from .templates import _tokens, fields_of, pack, valid_open


# A SessionAttacker's actions and the attack kind that enables each.
_ACTION_KINDS = {"tamper": "session_tamper", "replay": "session_replay", "inner": "session_inner",
                 "plaintext": "session_plaintext"}


@dataclass
class OwnSession:
    """An attacker's own encrypted session, driven just far enough to reach the checks behind it."""

    sid: bytes
    cipher: Any
    open_payload: bytes
    committed: int
    sampled: bool
    last_seq: int | None = None
    next_seq: int = 0
    done: bool = False
    gone: bool = False  # the verifier dropped it (RESYNC)
    sent: list[tuple[bytes, int]] = field(default_factory=list)  # (sealed payload, inner draft seq)


def _q_for(tokens: list[int], ctx: FuzzContext, rng: random.Random, contains: bool = True) -> SparseQWire:
    """Two entries per drafted token, weights 3:1: the token itself first (or, with `contains`
    False, two other ids, so the token has probability 0)."""
    v = ctx.vocab
    rows = [[t if contains else (t + 1) % v, (t + 2 + rng.randrange(v - 2)) % v] for t in tokens]
    return SparseQWire.from_arrays(np.array(rows), np.array([[3, 1]] * len(tokens)))


class SessionAttacker:
    """Opens real sessions with its own keys, then mixes valid drafts with hostile sealed messages."""

    def __init__(self, att: Attacker, ctx: FuzzContext, rng: random.Random, budget: Budget, kinds: set[str]):
        self.att, self.ctx, self.rng, self.budget, self.kinds = att, ctx, rng, budget, kinds
        self.me = att.ident
        self.up = ctx.topics.session_up(self.me.device_id, ctx.verifier_id)
        self.open_topic = ctx.topics.open(self.me.device_id)

    async def run(self, deadline: float) -> None:
        while self.budget.left > 0 and time.monotonic() < deadline:
            s = await self.open_session()
            if s is None:
                break
            await self.drive(s, deadline)
        await self.att.send(fence(self.up))

    async def open_session(self) -> OwnSession | None:
        sampled = self.rng.random() < 0.4
        o = valid_open(self.ctx, self.rng, temperature=0.8 if sampled else 0.0, max_new_tokens=self.rng.randint(8, 24),
                       seed=self.rng.randrange(2**32))
        cipher, so = _seal_open(self.ctx, self.me, o)
        payload = encode(so)
        out, _ = await self.att.request(Attack("session_open", self.open_topic, payload, _exp(OPENED), cipher=cipher,
                                               scaffold=True))
        if out != OPENED:
            return None
        return OwnSession(o.session_id, cipher, payload, len(o.prompt_ids), sampled,
                          next_seq=self.rng.randrange(1000))

    def _draft(self, s: OwnSession, *, seq: int | None = None, committed: int | None = None,
               tokens: list[int] | None = None, q: Any = ..., sid: bytes | None = None) -> DraftMsg:
        tokens = _tokens(self.ctx, self.rng, self.rng.randint(1, 4)) if tokens is None else tokens
        if q is ...:
            q = _q_for(tokens, self.ctx, self.rng) if s.sampled else None
        seq = (s.next_seq if s.last_seq is None else s.last_seq + 1) if seq is None else seq
        return DraftMsg(sid or s.sid, seq, s.committed if committed is None else committed, tokens, q)

    def _seal(self, s: OwnSession, inner: bytes, topic: str | None = None) -> bytes:
        return encode(s.cipher.seal(topic or self.up, inner))

    async def valid_draft(self, s: OwnSession) -> None:
        draft = self._draft(s)
        payload = self._seal(s, encode(draft))
        expect = _exp(reason(ErrorCode.BAD_SEQUENCE)) if s.done else _exp(VERDICT)
        out, msg = await self.att.request(Attack("session_draft", self.up, payload, expect, cipher=s.cipher,
                                                 scaffold=not s.done))
        if out == VERDICT and isinstance(msg, VerdictMsg):
            s.committed, s.last_seq, s.done = msg.committed_len, draft.seq, msg.done
            s.sent.append((payload, draft.seq))
        self.ctx.captured.append(Captured(self.me.device_id, self.up, s.sid, payload, False))

    async def drive(self, s: OwnSession, deadline: float) -> None:
        actions = [a for a in (self.tamper, self.replay, self.inner, self.plaintext) if self._enabled(a)]
        while self.budget.left > 0 and not s.gone and time.monotonic() < deadline:
            if not s.done and (s.last_seq is None or self.rng.random() < 0.3):
                await self.valid_draft(s)
                continue
            if (s.done and self.rng.random() < 0.2) or not actions:
                break
            if not self.budget.take():
                break
            await self.rng.choice(actions)(s)
        if not s.gone:
            close = self._seal(s, encode(Close(s.sid, "done")))
            await self.att.send(Attack("session_close", self.up, close, _exp(NO_REPLY), reply=False, scaffold=True))
            # The CLOSE has no answer: a fence on the same topic tells when it was handled.
            await self.att.request(fence(self.up))
        if "replay_open_after_close" in self.kinds and self.budget.take():
            # The recorded sealed OPEN of a finished session, replayed on its own topic: a replay
            # must change nothing, so it may not open the session again.
            await self.att.request(Attack("replay_open_after_close", self.open_topic, s.open_payload,
                                          _exp(reason(ErrorCode.REPLAY), reason(ErrorCode.WRONG_DEVICE)),
                                          cipher=s.cipher, new_session=True))

    def _enabled(self, action) -> bool:
        return _ACTION_KINDS[action.__name__] in self.kinds

    async def tamper(self, s: OwnSession) -> None:
        """A sealed draft that must fail authentication; it changes no state."""
        from security.envelope import Direction, build_aad, seal

        how = self.rng.choice(["flip", "truncate", "wrong_key", "relabel_seq", "wrong_topic", "other_topic",
                               "wrong_direction", "relabel_sid"])
        inner = encode(self._draft(s))
        seq = s.cipher.next_seq
        if how in ("wrong_key", "wrong_direction"):
            key, direction = ((os.urandom(32), Direction.UPLINK) if how == "wrong_key"
                              else (s.cipher.keys.downlink, Direction.DOWNLINK))
            s.cipher.next_seq += 1
            ct = seal(key, direction=direction, seq=seq,
                      aad=build_aad(PROTOCOL_VERSION, self.up, self.me.device_id, s.sid, seq), plaintext=inner)
            msg = Sealed(s.sid, seq, ct)
        elif how == "wrong_topic":
            msg = s.cipher.seal(self.open_topic, inner)
        elif how == "other_topic":
            msg = s.cipher.seal(self.ctx.topics.session_up(self.me.device_id, "other-verifier"), inner)
        else:
            msg = s.cipher.seal(self.up, inner)
            body = bytearray(msg.ciphertext)
            if how == "flip":
                body[self.rng.randrange(len(body))] ^= 1 << self.rng.randrange(8)
                msg = Sealed(s.sid, msg.seq, bytes(body))
            elif how == "truncate":
                msg = Sealed(s.sid, msg.seq, bytes(body[:self.rng.randrange(len(body))]))
            elif how == "relabel_seq":
                msg = Sealed(s.sid, msg.seq + self.rng.randint(1, 1000), bytes(body))
            else:  # the session id of another of this device's sessions? a fresh one: RESYNC
                await self.att.request(Attack("session_tamper", self.up, encode(Sealed(self.rng.randbytes(16),
                                              msg.seq, bytes(body))), _exp(RESYNC), cipher=s.cipher, note=how))
                return
        await self.att.request(Attack("session_tamper", self.up, encode(msg), _exp(reason(ErrorCode.DECRYPT_FAILED)),
                                      cipher=s.cipher, note=how))

    async def replay(self, s: OwnSession) -> None:
        """Envelopes the verifier has already seen: the last draft again is a QoS-1 duplicate
        (answered from the cache); anything older, or behind the window, is a replay."""
        if not s.sent:
            await self.inner(s)
            return
        how = self.rng.choice(["last", "older", "open", "window_jump"])
        if how == "open":
            await self.att.request(Attack("session_replay", self.open_topic, s.open_payload, _exp(OPENED),
                                          cipher=s.cipher, note="open while held"))
            return
        if how == "window_jump" and not s.done:
            s.cipher.next_seq += 64 + self.rng.randrange(64)  # later envelopes leave the old ones behind
            await self.valid_draft(s)
            how = "older"
        payload, seq = s.sent[-1] if how == "last" else self.rng.choice(s.sent)
        dup = seq == s.last_seq and payload == s.sent[-1][0]
        await self.att.request(Attack("session_replay", self.up, payload,
                                      _exp(VERDICT) if dup else _exp(reason(ErrorCode.REPLAY)), cipher=s.cipher,
                                      note=how))

    async def inner(self, s: OwnSession) -> None:
        """Well-sealed messages whose content breaks a rule."""
        rng, ctx = self.rng, self.ctx
        oor, mal = reason(ErrorCode.OUT_OF_RANGE), reason(ErrorCode.MALFORMED)
        bad_seq = reason(ErrorCode.BAD_SEQUENCE)
        choices = ["vocab", "q_vocab", "q_zero_prob", "q_bad_len", "q_zero_row", "wrong_type", "garbage",
                   "other_sid", "committed"]
        if s.sampled:
            choices.append("missing_q")
        if s.last_seq is not None:
            choices += ["seq_jump", "seq_stale"]
        how = rng.choice(choices)
        expect, tokens = _exp(oor), _tokens(ctx, rng, rng.randint(1, 3))
        if how == "vocab":
            inner = encode(self._draft(s, tokens=[*tokens, ctx.vocab + rng.randrange(100)], q=None))
        elif how == "q_vocab":
            ids, weights = _q_for(tokens, ctx, rng).arrays(len(tokens))
            ids[0, 1] = ctx.vocab + rng.randrange(100)
            inner = encode(self._draft(s, tokens=tokens, q=SparseQWire.from_arrays(ids, weights)))
        elif how == "q_zero_prob":
            inner = encode(self._draft(s, tokens=tokens, q=_q_for(tokens, ctx, rng, contains=False)))
        elif how == "q_bad_len":
            q = _q_for(tokens, ctx, rng)
            inner = pack([*fields_of(self._draft(s, tokens=tokens, q=None))[:6], [2, q.ids[:-1], q.weights]])
            expect = _exp(mal)
        elif how == "q_zero_row":
            q = _q_for(tokens, ctx, rng)
            inner = encode(self._draft(s, tokens=tokens, q=SparseQWire(2, q.ids, bytes(len(q.weights)))))
        elif how == "missing_q":
            inner, expect = encode(self._draft(s, tokens=tokens, q=None)), _exp(mal)
        elif how == "wrong_type":
            wrong: list[Message] = [Opened(s.sid, "v", 3), VerdictMsg(s.sid, 0, [True], 1, 1, 3),
                                    Resync(s.sid, "x"), ErrorMsg(s.sid, 0, 1, "x"), valid_open(ctx, rng, s.sid)]
            inner = encode(rng.choice(wrong))
            expect = _exp(reason(ErrorCode.UNKNOWN_TYPE))
        elif how == "garbage":
            inner = rng.randbytes(rng.randint(0, 30))
            try:
                decode(inner)
                expect = _exp(mal, reason(ErrorCode.UNKNOWN_TYPE), reason(ErrorCode.PLAINTEXT_REFUSED))
            except WireError as err:
                expect = _exp(err.reason)
        elif how == "other_sid":  # the envelope's session is ours, the inner draft's is unknown
            inner, expect = encode(self._draft(s, sid=rng.randbytes(16))), _exp(RESYNC, mal)
        elif how == "seq_jump":
            assert s.last_seq is not None
            inner, expect = encode(self._draft(s, seq=s.last_seq + 2 + rng.randrange(100))), _exp(bad_seq)
        elif how == "seq_stale":  # behind the last verdict (or, after seq 0, ahead of the next)
            assert s.last_seq is not None
            inner = encode(self._draft(s, seq=rng.randrange(s.last_seq) if s.last_seq else 5))
            expect = _exp(bad_seq)
        else:  # committed_len off: the verifier drops the session and asks for a resync
            inner, expect = encode(self._draft(s, committed=s.committed + 1 + rng.randrange(5))), _exp(RESYNC)
        if s.done and how in ("vocab", "q_vocab", "q_zero_prob", "missing_q", "committed", "seq_jump"):
            expect = _exp(bad_seq)
        out, _ = await self.att.request(Attack("session_inner", self.up, self._seal(s, inner), expect, cipher=s.cipher,
                                               note=how))
        if out == RESYNC and how == "committed":
            s.gone = True

    async def plaintext(self, s: OwnSession) -> None:
        """Plaintext for an encrypted session, and sealed envelopes on the open topic."""
        how = self.rng.choice(["draft", "close", "sealed_on_open"])
        if how == "sealed_on_open":
            payload, topic = self._seal(s, encode(self._draft(s)), self.open_topic), self.open_topic
            expect = _exp(reason(ErrorCode.UNKNOWN_TYPE))
        else:
            msg = self._draft(s) if how == "draft" else Close(s.sid)
            payload, topic, expect = encode(msg), self.up, _exp(reason(ErrorCode.PLAINTEXT_REFUSED))
        await self.att.request(Attack("session_plaintext", topic, payload, expect, cipher=s.cipher, note=how))
