"""The attacker's client: the shared budget, the tally of what was sent and seen, and the
attacker that matches each reply on its downlink with the payload that caused it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import Close, ErrorMsg, Opened, Resync, Sealed, VerdictMsg, WireError, decode, encode

from .contract import (
    DROPPED, NO_REPLY, NON_REJECTIONS, OPENED, RESYNC, SPOOFED, VERDICT, Attack, FuzzContext, Identity, _exp,
    error_outcome, peek_session_id,
)
from .transport import Transport


def counter_delta(before: Mapping, after: Mapping) -> Counter:
    """`after - before` key by key, keeping only the keys that changed (negative ones too)."""
    delta = Counter(after)
    delta.subtract(Counter(before))
    return Counter({k: v for k, v in delta.items() if v})


class Budget:
    """A shared count of hostile payloads left to send."""

    def __init__(self, n: int):
        self.left = n

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


@dataclass
class Tally:
    """What every attacker sent and saw."""

    sent: Counter = field(default_factory=Counter)  # kind -> payloads
    outcomes: dict[str, Counter] = field(default_factory=dict)  # kind -> outcome -> n
    observed: Counter = field(default_factory=Counter)  # rejection reason -> n, from the replies
    counted_silently: Counter = field(default_factory=Counter)  # bad topics (no reply to anyone)
    scaffold: Counter = field(default_factory=Counter)
    violations: list[dict] = field(default_factory=list)
    violation_count: Counter = field(default_factory=Counter)
    unsolicited: int = 0
    undecodable: int = 0
    missing: int = 0
    spoofed: int = 0

    def expected(self) -> Counter:
        """The rejections the verifier should have counted: every rejection reply, and the bad
        topics it counts without one."""
        expected = Counter(self.observed)
        expected.update(self.counted_silently)
        return expected

    def record(self, attack: Attack, outcome: str, detail: str = "") -> None:
        self.outcomes.setdefault(attack.kind, Counter())[outcome] += 1
        if outcome not in NON_REJECTIONS and outcome != "undecodable":
            self.observed[outcome] += 1
        if outcome not in attack.expect:
            self.violation_count[attack.kind] += 1
            if len(self.violations) < 50:
                self.violations.append({"kind": attack.kind, "note": attack.note, "topic": attack.topic,
                                        "expected": sorted(attack.expect), "got": outcome, "detail": detail[:200],
                                        "payload_head": attack.payload[:48].hex()})


class Attacker:
    """One attacker device: publishes attacks, matches each reply on its downlink to its attack."""

    def __init__(self, ident: Identity, ctx: FuzzContext, transport: Transport, tally: Tally, window: int):
        self.ident = ident
        self.ctx = ctx
        self.transport = transport
        self.tally = tally
        self.down = ctx.topics.down(ident.device_id)
        self.pending: deque[tuple[Attack, asyncio.Future]] = deque()
        self.slots = asyncio.Semaphore(window)
        self.ciphers: dict[bytes, Any] = {}
        self.cleanups: set[asyncio.Task] = set()

    async def send(self, attack: Attack) -> asyncio.Future | None:
        """Publish; returns a future of (outcome, decoded reply) when a reply is due."""
        (self.tally.scaffold if attack.scaffold else self.tally.sent)[attack.kind] += 1
        if attack.counted == "spoof":
            self.tally.spoofed += 1
        if attack.cipher is not None:
            sid = peek_session_id(attack.payload)
            if sid is not None:
                self.ciphers[sid] = attack.cipher
        future: asyncio.Future | None = None
        if attack.reply:
            await asyncio.wait_for(self.slots.acquire(), 30)
            future = asyncio.get_running_loop().create_future()
            self.pending.append((attack, future))
        else:
            outcome = DROPPED if DROPPED in attack.expect else SPOOFED if attack.counted == "spoof" else NO_REPLY
            self.tally.record(attack, outcome)
            if attack.counted and attack.counted != "spoof":
                self.tally.counted_silently[attack.counted] += 1
        await self.transport.publish(attack.topic, attack.payload)
        return future

    async def request(self, attack: Attack) -> tuple[str, Any]:
        future = await self.send(attack)
        if future is None:
            return NO_REPLY, None
        return await asyncio.wait_for(future, 30)

    def on_message(self, payload: bytes) -> None:
        if not self.pending:
            self.tally.unsolicited += 1
            return
        attack, future = self.pending.popleft()
        self.slots.release()
        outcome, msg, detail = self.classify(attack, payload)
        if outcome == "undecodable":
            self.tally.undecodable += 1
        sid = peek_session_id(attack.payload)
        got_sid = getattr(msg, "session_id", None)
        if sid is not None and got_sid is not None and got_sid != sid and attack.kind != "session_inner":
            detail = f"reply for session {got_sid.hex()} (misaligned?) " + detail
        self.tally.record(attack, outcome, detail)
        if outcome == OPENED and attack.new_session:
            task = asyncio.get_running_loop().create_task(self._close_intruding_session(attack, msg))
            self.cleanups.add(task)
            task.add_done_callback(self.cleanups.discard)
        if not future.done():
            future.set_result((outcome, msg))

    def classify(self, attack: Attack, payload: bytes) -> tuple[str, Any, str]:
        try:
            msg = decode(payload)
        except WireError as err:
            return "undecodable", None, str(err)
        if isinstance(msg, Sealed):
            cipher = attack.cipher if attack.cipher and attack.cipher.session_id == msg.session_id \
                else self.ciphers.get(msg.session_id)
            if cipher is None:
                return "undecodable", None, "sealed reply for a session this sender holds no key for"
            try:
                inner, _ = cipher.open(self.down, msg)
                msg = decode(inner)
            except WireError as err:
                return "undecodable", None, f"sealed reply: {err}"
        if isinstance(msg, ErrorMsg):
            return error_outcome(msg), msg, msg.message
        if isinstance(msg, Resync):
            return RESYNC, msg, msg.reason
        if isinstance(msg, Opened):
            return OPENED, msg, ""
        if isinstance(msg, VerdictMsg):
            return VERDICT, msg, ""
        return f"unexpected_{msg.type.name.lower()}", msg, ""

    async def _close_intruding_session(self, attack: Attack, opened: Opened) -> None:
        """A hostile payload won a session (a squat, or a bug): give it back with a sealed CLOSE."""
        cipher = attack.cipher
        if cipher is None or opened is None:
            return
        up = self.ctx.topics.session_up(self.ident.device_id, self.ctx.verifier_id)
        sealed = cipher.seal(up, encode(Close(opened.session_id, "fuzz cleanup")))
        await self.send(Attack("cleanup_close", up, encode(sealed), _exp(NO_REPLY), reply=False, scaffold=True))

    async def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until every reply due so far is in. MQTT keeps order only within one topic, so
        an attacker switching topics waits here first, to keep replies matched to payloads."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (self.pending or self.cleanups) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        while self.pending:
            attack, future = self.pending.popleft()
            self.tally.missing += 1
            self.tally.record(attack, "missing")
            if not future.done():
                future.set_result(("missing", None))
