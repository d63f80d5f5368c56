"""`run_mqtt`: the whole fuzz run over a real broker, while well-behaved devices generate."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas import ErrorCode, ErrorMsg, Sealed, SealedOpen, Topics, decode

from .campaign import FuzzConfig, attack, fuzz_context, identities
from .contract import Captured, error_outcome, fence, reason
from .report import build_report
from .system import DeviceRecord, RssWatch, SelfStarted, StatsFeed, device_loop
from .tally import Attacker, Tally
from .templates import _topic
from .transport import MqttTransport


async def run_mqtt(cfg: FuzzConfig) -> dict:
    from edgespec.config import resolve_model_dir, set_threads
    from security.channel import DeviceKeys
    from security.dev_identity import default_home, ensure_dev_identity
    from speculative.models import load_lm
    from transport.urls import ClientAuth
    from verifier_node.service import STATS_INTERVAL_S

    from ..workloads import TEXT_PROMPTS, hf_generate, text_cases

    set_threads(cfg.threads)
    kinds = cfg.selected()
    started = time.monotonic()
    deadline = started + cfg.time_limit_s
    target_dir, draft_dir = resolve_model_dir(cfg.target_model, "target"), resolve_model_dir(cfg.draft_model, "draft")
    target, draft = load_lm(target_dir), load_lm(draft_dir)
    cases = text_cases(draft, len(TEXT_PROMPTS))
    prompts = [c.prompt_ids for c in cases]
    refs = [hf_generate(target, c, cfg.max_new_tokens)[0] for c in cases]  # the target alone, greedy

    work = Path(tempfile.mkdtemp(prefix="edgespec-fuzz-"))
    own = cfg.broker is None
    home = Path(cfg.home) if cfg.home else (work / "home" if own else default_home())
    acl = own and cfg.broker_mode == "acl"
    if cfg.spoof and acl:
        raise ValueError("--spoof needs a broker without ACL (--broker-mode open): the ACL refuses those topics")
    topics = Topics()
    ctx = fuzz_context(target, topics, cfg.verifier_id, home, acl)
    stateless_ids, session_ids = identities(home, cfg.stateless_attackers, cfg.session_attackers, cfg.seed)
    device_ids = [f"fuzz-dev-{i}" for i in range(cfg.devices)]
    ctx.victims = tuple(device_ids)
    device_keys = {d: DeviceKeys.from_bundle(ensure_dev_identity(home, d)[0]) for d in device_ids}
    system: SelfStarted | None = None
    auth: Callable[[str], ClientAuth]
    if own:
        system = SelfStarted(cfg, target_dir, [*device_ids, *(i.device_id for i in stateless_ids + session_ids)],
                             home, work)
        system.start()
        url = system.url
        auth = system.auth
        pid = system.proc.pid if system.proc else None
    else:
        assert cfg.broker is not None  # not own
        url, pid = cfg.broker, cfg.verifier_pid

        def auth(_user: str) -> ClientAuth:
            return ClientAuth()

    rss = RssWatch(pid).start()
    camera_log = logging.getLogger("edgespec.camera")
    camera_level = camera_log.level
    camera_log.setLevel(logging.ERROR)  # spoofed errors make every device warn; the report counts them
    tally = Tally()
    stats = StatsFeed()
    records = [DeviceRecord() for _ in device_ids]
    attack_over = asyncio.Event()
    warm = [asyncio.Event() for _ in device_ids]
    report: dict[str, Any] = {}
    spoof_seen: Counter = Counter()
    try:
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            def record_uplink(topic: str, payload: bytes) -> None:
                try:
                    msg = decode(payload)
                    up = topics.parse_uplink(topic)
                except Exception:  # WireError, or the decoder's own failures (the features overflow)
                    return
                if isinstance(msg, (Sealed, SealedOpen)) and up.device_id in device_ids:
                    ctx.captured.append(Captured(up.device_id, topic, msg.session_id, payload,
                                                 isinstance(msg, SealedOpen)))

            def spoof_observer(_topic: str, payload: bytes) -> None:
                try:
                    msg = decode(payload)
                except Exception:
                    return
                if isinstance(msg, ErrorMsg):
                    spoof_seen[error_outcome(msg)] += 1

            suffix = secrets.token_hex(3)
            await stack.enter_async_context(MqttTransport(
                url, f"fuzz-stats-{suffix}", auth("fuzz-operator"),
                [f"{topics.prefix}/verifier/{cfg.verifier_id}/stats"], stats.on_message))
            await stack.enter_async_context(MqttTransport(
                url, f"fuzz-recorder-{suffix}", auth("fuzz-recorder"),
                [f"{topics.prefix}/dev/+/up/#"], record_uplink))
            if cfg.spoof:
                await stack.enter_async_context(MqttTransport(
                    url, f"fuzz-spoof-observer-{suffix}", ClientAuth(), [topics.down(d) for d in device_ids],
                    spoof_observer))
            attackers: list[Attacker] = []
            session_attackers: list[Attacker] = []
            for ident in stateless_ids + session_ids:
                box: dict[str, Attacker] = {}
                transport = MqttTransport(url, f"fuzz-{ident.device_id}-{suffix}", auth(ident.device_id),
                                          [topics.down(ident.device_id)],
                                          lambda _t, p, box=box: box["a"].on_message(p))
                att = Attacker(ident, ctx, transport, tally, cfg.window if ident in stateless_ids else 1)
                box["a"] = att
                await stack.enter_async_context(transport)
                (attackers if ident in stateless_ids else session_attackers).append(att)

            device_tasks = [asyncio.create_task(device_loop(
                i, url, d, device_keys[d], auth(d), draft, prompts, refs, cfg, attack_over,
                warm[i], records[i]), name=f"device-{d}") for i, d in enumerate(device_ids)]
            try:
                await asyncio.wait_for(asyncio.gather(*(w.wait() for w in warm)), 120)
            except asyncio.TimeoutError:
                pass
            baseline = await stats.next_after(time.monotonic(), STATS_INTERVAL_S * 2 + 2)
            rss.mark("attack")
            t0 = time.monotonic()
            await attack(ctx, cfg, attackers, session_attackers, tally, kinds, deadline)
            attack_s = time.monotonic() - t0
            attack_over.set()
            _, pending = await asyncio.wait(device_tasks, timeout=max(30.0, cfg.device_timeout_s * 3))
            for task in pending:
                task.cancel()
            probe_ok = False
            if attackers:  # still answering: a last malformed payload gets its ERROR back
                out, _ = await attackers[0].request(fence(_topic(ctx, attackers[0].ident, "up"), kind="probe"))
                probe_ok = out == reason(ErrorCode.MALFORMED)
            final = await stats.next_after(time.monotonic(), STATS_INTERVAL_S * 2 + 2)
            rss.mark("after")
            report = build_report(cfg, kinds, tally, baseline, final, records, rss.summary(),
                                  alive=(system.alive() if system else True) and probe_ok and final is not None,
                                  attack_s=attack_s, spoof_seen=spoof_seen,
                                  verifier_log=(list(system.log)[-20:] if system else []),
                                  tracebacks=system.tracebacks if system else 0,
                                  queue_drops=system.queue_drops if system else None, acl=acl,
                                  target=str(target_dir), draft=str(draft_dir))
    finally:
        rss.stop()
        camera_log.setLevel(camera_level)
        if system is not None:
            system.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.monotonic() - started
    return report
