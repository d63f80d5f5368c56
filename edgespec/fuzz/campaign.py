"""The attack as a whole: its configuration, the stateless attackers' loop, every attacker at
once, the context and identities they start from, and the in-process run the tests use."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import Topics

from .attacks import CAPS, STATEFUL_KINDS, STATELESS
from .contract import Attack, FuzzContext, Identity, fence
from .sessions import SessionAttacker
from .tally import Attacker, Budget, Tally, counter_delta
from .templates import _topic
from .transport import LocalBus


CHUNK = 32  # payloads generated at a time, then sent topic by topic


async def send_by_topic(att: Attacker, attacks: list[Attack]) -> None:
    """Send `attacks` grouped by topic (in first-seen order), settling between topics."""
    for topic in dict.fromkeys(a.topic for a in attacks):
        for a in attacks:
            if a.topic == topic:
                await att.send(a)
        await att.settle()


async def stateless_attacker(att: Attacker, ctx: FuzzContext, rng: random.Random, budget: Budget,
                             kinds: dict[str, float], caps: Counter, deadline: float) -> None:
    kinds = dict(kinds)
    misses = 0
    chunk: list[Attack] = []
    while budget.left > 0 and time.monotonic() < deadline:
        for capped in [k for k in kinds if k in CAPS and caps[k] >= CAPS[k]]:
            del kinds[capped]
        if not kinds:
            break
        kind = rng.choices(list(kinds), list(kinds.values()))[0]
        attack = STATELESS[kind][0](ctx, att.ident, rng)
        if attack is None:
            misses += 1
            if misses > 200:  # nothing captured yet for the kinds that need it
                await asyncio.sleep(0.01)
                misses = 0
            continue
        if not budget.take():
            return
        caps[kind] += 1
        chunk.append(attack)
        if len(chunk) >= CHUNK:
            await send_by_topic(att, chunk)
            chunk = []
    await send_by_topic(att, chunk)
    # A last payload that must be answered: once its ERROR is back, all before it were handled.
    await att.send(fence(_topic(ctx, att.ident, "up")))


@dataclass
class FuzzConfig:
    count: int = 10_000
    devices: int = 3
    seed: int = 0
    target_model: str = "default"
    draft_model: str = "default"
    broker: str | None = None  # None: start a broker and a verifier here
    verifier_id: str = "fuzz-verifier"
    verifier_pid: int | None = None
    home: str | None = None
    broker_mode: str = "acl"
    spoof: bool = False
    stateless_attackers: int = 3
    session_attackers: int = 2
    window: int = 32
    max_new_tokens: int = 24
    gamma: int = 4
    rss_growth_mb: float = 64.0
    time_limit_s: float = 600.0
    device_timeout_s: float = 10.0
    kinds: tuple[str, ...] | None = None  # None: all
    exclude: tuple[str, ...] = ()
    threads: int = 1

    def selected(self) -> set[str]:
        every = set(STATELESS) | set(STATEFUL_KINDS)
        chosen = set(self.kinds) if self.kinds else every
        unknown = (chosen | set(self.exclude)) - every
        if unknown:
            raise ValueError(f"unknown attack kinds {sorted(unknown)}; known: {sorted(every)}")
        chosen -= set(self.exclude)
        if not self.spoof:
            chosen.discard("spoof")
        return chosen


def fuzz_context(target: Any, topics: Topics, verifier_id: str, home: Path | None, acl: bool) -> FuzzContext:
    from security.dev_identity import ensure_verifier_keys

    ring = ensure_verifier_keys(home)
    shape = tuple(target.projector.feature_shape) if target.projector is not None else None
    return FuzzContext(topics=topics, verifier_id=verifier_id, vocab=target.vocab_size, fingerprint=target.fingerprint,
                       feature_shape=shape, max_positions=target.max_positions,
                       verifier_pub=ring.public_keys()[ring.current_key_id], verifier_key_id=ring.current_key_id,
                       acl=acl)


def identities(home: Path | None, n_stateless: int, n_session: int, seed: int) -> tuple[list[Identity], list[Identity]]:
    from security.channel import DeviceKeys
    from security.dev_identity import ensure_dev_identity

    def provisioned(name: str) -> Identity:
        return Identity(name, DeviceKeys.from_bundle(ensure_dev_identity(home, name)[0]))

    stateless = [provisioned(f"fuzz-att-{i}") for i in range(max(0, n_stateless - 1))]
    stateless.append(Identity(f"fuzz-stranger-{seed % 1000}"))  # nobody provisioned it
    return stateless, [provisioned(f"fuzz-sess-{i}") for i in range(n_session)]


async def attack(ctx: FuzzContext, cfg: FuzzConfig, attackers: list[Attacker], session_attackers: list[Attacker],
                 tally: Tally, kinds: set[str], deadline: float) -> None:
    """All attackers at once; returns once every reply is in (or missing)."""
    stateless_kinds = {k: STATELESS[k][1] for k in STATELESS if k in kinds}
    stateful = kinds & set(STATEFUL_KINDS)
    share = len(stateful) / max(1, len(stateful) + len(stateless_kinds)) if session_attackers else 0.0
    n_session = int(cfg.count * min(0.35, share * 2)) if stateful and session_attackers else 0
    if not stateless_kinds:
        n_session = cfg.count
    stateless_budget, session_budget = Budget(cfg.count - n_session), Budget(n_session)
    caps: Counter = Counter()
    jobs = []
    for i, att in enumerate(attackers):
        if stateless_kinds:
            jobs.append(stateless_attacker(att, ctx, random.Random(cfg.seed * 1000 + i), stateless_budget,
                                           stateless_kinds, caps, deadline))
    for i, att in enumerate(session_attackers):
        if stateful:
            jobs.append(SessionAttacker(att, ctx, random.Random(cfg.seed * 1000 + 500 + i), session_budget,
                                        stateful).run(deadline))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            tally.violations.append({"kind": "attacker", "got": f"{type(r).__name__}: {r}"[:300]})
            tally.violation_count["attacker_crashed"] += 1
    for att in [*attackers, *session_attackers]:
        await att.drain(30)


async def run_local(core: Any, ctx: FuzzContext, cfg: FuzzConfig, stateless: list[Identity],
                    sessions: list[Identity]) -> dict:
    """The attack against a `VerifierCore` in this process (no broker, no devices): checks that
    every payload gets the contract's outcome and that the core counts each rejection."""
    bus = LocalBus(core, ctx)
    tally = Tally()
    kinds = cfg.selected()
    before = Counter(core.rejected)
    attackers = [Attacker(i, ctx, bus, tally, cfg.window) for i in stateless]
    session_attackers = [Attacker(i, ctx, bus, tally, 1) for i in sessions]
    for att in attackers + session_attackers:
        bus.listeners[att.down] = att.on_message
    await attack(ctx, cfg, attackers, session_attackers, tally, kinds, time.monotonic() + cfg.time_limit_s)
    return {"tally": tally, "counted": counter_delta(before, core.rejected), "expected": tally.expected()}
