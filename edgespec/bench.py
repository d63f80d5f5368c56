"""`edgespec bench`: one process, one pair, one prompt set, every way of generating.

(a)  the target alone, Hugging Face `generate()` (cloud-only autoregressive)
(a2) the target alone, the project's KV-cached loop (same forwards, less per-call overhead)
(b)  the speculative loop in-process, no broker
(c)  Hugging Face assisted generation (`generate(assistant_model=draft)`)
(d)  the full path: edge session -> Mosquitto -> verifier process -> back (encrypted)
null protocol-only round trip through Mosquitto with a model-free verifier, plain and encrypted

Two workloads on the same pair: `vision` (the camera's job: captions conditioned on features
of synthetic scenes) and `text` (text prompts, no features). Hugging Face assisted generation
cannot give the draft its own vision prefix, so (c) runs in the text workload only. A target
with a chat template and no vision prefix (a real model, `--pair smollm2-135m`) runs `event`
(held-out camera event descriptions) and `general` (held-out general questions) instead, both
in its chat template (edgespec.lm_prompts).
Modes run interleaved, rep by rep, so machine noise hits them alike; ratios come from one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bench_rounds import print_round_costs, round_costs, stop_for_final_stats
from .config import DEFAULTS, resolve_model_dir, set_threads
from .model_registry import pair_model_dirs
from .toolkit import expected_tokens_per_round, percentile, spawn
from .workloads import TEXT_PROMPTS, Case, chat_cases, has_chat_template, hf_generate, text_cases, vision_cases

NULL_PREFIX = "bench-null/v1"  # keeps the model-free verifier apart from the real one
VERIFIER_ID = "bench-verifier"


@dataclass
class ModeResult:
    name: str
    seconds: float = 0.0
    tokens: int = 0
    rounds: int = 0
    accepted: int = 0
    drafted: int = 0
    judged: int = 0  # draft positions the verifier judged (up to and including a rejection)
    target_forwards: int = 0
    target_seconds: float = 0.0  # in the target's verification calls ((b) only)
    full_rounds: int = 0  # rounds, other than a session's last, that accepted every draft
    wire_up: int = 0
    wire_down: int = 0
    outputs: list[list[int]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def add(self, out: list[int], seconds: float, forwards: int, result=None, up=0, down=0):
        if result is not None:
            self.rounds += result.rounds
            self.accepted += sum(result.accepted_per_round)
            self.drafted += sum(result.drafted_per_round)
            self.judged += result.evaluated_positions
            self.target_seconds += result.target_seconds
            self.full_rounds += sum(n == k for n, k in zip(result.accepted_per_round[:-1], result.drafted_per_round))
        self.outputs.append(out)
        self.seconds += seconds
        self.tokens += len(out)
        self.target_forwards += forwards
        self.wire_up += up
        self.wire_down += down


# ------------------------------------------------------------------ the modes


async def broker_sessions(url: str, draft, cases: list[Case], gamma: int, n: int, device: str, keys=None):
    from camera_node.link import EdgeLink
    from camera_node.session import EdgeRequest, run_edge_session

    async with EdgeLink(url, device, keys=keys) as link:
        return [await run_edge_session(link, draft,
                                       EdgeRequest(c.prompt_ids, c.features, gamma=gamma, max_new_tokens=n))
                for c in cases]


async def null_round_trips(url: str, rounds: int, gamma: int, keys=None) -> list[float]:
    """Round trips of a k-token draft against the model-free verifier (sealed when `keys`)."""
    from camera_node.link import EdgeLink
    from schemas import DraftMsg, SessionOpen, Topics

    async with EdgeLink(url, "bench-null", keys=keys, topics=Topics(NULL_PREFIX)) as link:
        channel = link.channel(os.urandom(16))
        await channel.send_open(SessionOpen(channel.session_id, [1]))  # sealed (keys agreed) when keys
        await channel.wait_opened()
        latencies = []
        for seq in range(rounds):
            msg = DraftMsg(channel.session_id, seq, 10 + seq, list(range(gamma)), None)
            started = time.perf_counter()
            await channel.exchange(msg)
            latencies.append(time.perf_counter() - started)
        return latencies


# ------------------------------------------------------------------ driver


def run_workload(name: str, cases: list[Case], target, draft, url: str, args,
                 keys) -> tuple[dict, dict[str, ModeResult]]:
    """All modes on one workload, interleaved rep by rep."""
    from speculative.loop import generate_autoregressive, run_local
    from speculative.sampling import SamplingParams

    n, gamma, greedy = args.max_new_tokens, args.gamma, SamplingParams()
    with_hf_assisted = all(c.features is None for c in cases)
    modes = {k: ModeResult(k) for k in ("a", "a2", "b", "c", "d") if k != "c" or with_hf_assisted}
    asyncio.run(broker_sessions(url, draft, cases[:2], gamma, n, "bench-dev", keys))
    for _ in range(args.reps):
        for case in cases:
            out, s, f = hf_generate(target, case, n)
            modes["a"].add(out, s, f)
            r = generate_autoregressive(target, case.prompt_ids, case.features, greedy, n)
            modes["a2"].add(r.token_ids, r.seconds, r.target_forwards)
            r = run_local(target, draft, case.prompt_ids, case.features, greedy, gamma, n)
            modes["b"].add(r.token_ids, r.seconds, r.target_forwards, r)
            if with_hf_assisted:
                out, s, f = hf_generate(target, case, n, assistant=draft.model, gamma=gamma)
                modes["c"].add(out, s, f)
        for o in asyncio.run(broker_sessions(url, draft, cases, gamma, n, "bench-dev", keys)):
            r = o.result
            modes["d"].add(r.token_ids, r.seconds, r.target_forwards, r, o.traffic.up, o.traffic.down)
    return summarise(name, modes, gamma), modes


def run_bench(args) -> dict:
    import torch

    from security.channel import DeviceKeys
    from security.dev_identity import ensure_dev_identity
    from speculative.models import load_lm

    set_threads(args.threads)
    if getattr(args, "pair", None):
        target_dir, draft_dir = pair_model_dirs(args.pair)
    else:
        target_dir, draft_dir = (resolve_model_dir(args.target_model, "target"),
                                 resolve_model_dir(args.draft_model, "draft"))
    target, draft = load_lm(target_dir), load_lm(draft_dir)
    keys = DeviceKeys.from_bundle(ensure_dev_identity(None, "bench-dev")[0])
    null_keys = DeviceKeys.from_bundle(ensure_dev_identity(None, "bench-null")[0])
    if has_chat_template(target):
        workloads = {kind: chat_cases(target, kind, args.prompts) for kind in ("event", "general")}
    else:
        workloads = {"vision": vision_cases(target, args.prompts)} if target.projector is not None else {}
        workloads["text"] = text_cases(target, args.prompts)
    workloads = {k: v for k, v in workloads.items() if args.workload in ("all", k)}
    results, modes, null_plain, null_sealed = run_through_broker(args, target_dir, target, draft, workloads,
                                                                 keys, null_keys)
    null_sealed_ms = statistics.fmean(null_sealed) * 1e3
    for name, w in results.items():
        w["round_costs"] = round_costs(modes[name]["b"], modes[name]["d"], w["verifier_stats"], null_sealed_ms)
    result = {
        "config": {"target": str(target.path), "draft": str(draft.path), "target_params": target.num_parameters,
                   "draft_params": draft.num_parameters, "gamma": args.gamma, "max_new_tokens": args.max_new_tokens,
                   "prompts": args.prompts, "reps": args.reps, "threads": args.threads, "torch": torch.__version__,
                   "pair": getattr(args, "pair", None)},
        "workloads": results,
        "null_round_trip_ms": {"plain": latency_summary(null_plain), "encrypted": latency_summary(null_sealed)},
        "encryption_bytes": encryption_overhead(args.gamma),
        "wakeup": wakeup_cost(target, (vision_cases(target, 1) if target.projector is not None
                                       else text_cases(target, 1))[0]),
    }
    print_table(result)
    return result


def run_through_broker(args, target_dir: Path, target, draft, workloads: dict[str, list[Case]], keys, null_keys):
    """Every workload against a verifier process of its own, then the null-model round trips,
    all through one Mosquitto: (results, modes, plain round trips, sealed round trips)."""
    from broker.runner import MosquittoBroker
    from schemas import Topics

    with MosquittoBroker(port=0) as broker:
        null = spawn(["-m", "edgespec.null_verifier", "--broker", broker.url, "--prefix", NULL_PREFIX],
                     "null verifier ready")
        try:
            results, modes = {}, {}
            for name, cases in workloads.items():  # a verifier each, so its timers are the workload's
                verifier = spawn(["-m", "edgespec.cli", "verifier", "--broker", broker.url, "--target-model",
                                  str(target_dir), "--verifier-id", VERIFIER_ID, "--threads", str(args.threads)],
                                 "ready on")
                try:
                    results[name], modes[name] = run_workload(name, cases, target, draft, broker.url, args, keys)
                    results[name]["verifier_stats"] = asyncio.run(
                        stop_for_final_stats(broker.url, Topics().verifier_stats(VERIFIER_ID), verifier))
                finally:
                    verifier.terminate()
                    verifier.wait(timeout=10)
            skip = args.null_rounds // 10
            null_plain = asyncio.run(null_round_trips(broker.url, args.null_rounds, args.gamma))[skip:]
            null_sealed = asyncio.run(null_round_trips(broker.url, args.null_rounds, args.gamma, null_keys))[skip:]
        finally:
            null.terminate()
            null.wait(timeout=10)
    return results, modes, null_plain, null_sealed


def encryption_overhead(gamma: int, q_top: int = 16) -> dict:
    """Payload bytes of typical messages in the clear and sealed (computed, not timed)."""
    import numpy as np

    from schemas import DraftMsg, Features, SessionOpen, SparseQWire, Topics, VerdictMsg, encode
    from schemas.messages import Message
    from security.channel import device_open
    from security.keys import generate_keypair

    sid = os.urandom(16)
    device, verifier = generate_keypair(), generate_keypair()
    examples: dict[str, Message] = {
        "open (4x32 fp16 features)": SessionOpen(sid, [1, 2], Features.from_array(np.zeros((4, 32))),
                                                  max_new_tokens=DEFAULTS.max_new_tokens),
        f"draft, greedy, k={gamma}": DraftMsg(sid, 7, 20, list(range(100, 100 + gamma)), None),
        f"draft, sampled, k={gamma}, q_top={q_top}": DraftMsg(
            sid, 7, 20, list(range(100, 100 + gamma)),
            SparseQWire.from_arrays(np.ones((gamma, q_top), np.int64) * 300, np.ones((gamma, q_top), np.int64) * 4000)),
        f"verdict, k={gamma}": VerdictMsg(sid, 7, [True] * gamma, gamma, 123, 25),
    }
    topic = Topics().session_up("cam-1", "verifier-1")
    out = {}
    for name, msg in examples.items():
        plain = encode(msg)
        if isinstance(msg, SessionOpen):
            _, sealed_open = device_open(device, verifier.public, verifier.key_id, "cam-1", sid, topic, plain)
            sealed = encode(sealed_open)
        else:
            cipher, _ = device_open(device, verifier.public, verifier.key_id, "cam-1", sid, topic, b"")
            sealed = encode(cipher.seal(topic, plain))
        out[name] = {"plain": len(plain), "sealed": len(sealed), "added": len(sealed) - len(plain)}
    return out


def wakeup_cost(target, case: Case, rounds: int = 60, idle_s: float = 0.003) -> dict:
    """Median time of one 4-token verification back to back, after the process polled a
    socket for `idle_s` (as a busy-polling verifier does between a device's rounds) and after
    it slept `idle_s`: what waiting for another process costs a forward on this machine,
    beyond the network. The three are taken in turn, round by round, so a phase of the
    machine weighs on all alike."""
    import select
    import socket

    from speculative.sampling import SamplingParams
    from speculative.target import TargetSession

    session = TargetSession(target, SamplingParams())
    session.open(case.prompt_ids, case.features)
    block = [5, 6, 7, 8]
    quiet, _ = socket.socketpair()

    def poll(seconds: float) -> None:  # what transport.reconnect.BusyPoll makes an event loop do
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            os.sched_yield()
            select.select([quiet], [], [], 0)

    waits = {"hot": lambda: None, "after_poll": lambda: poll(idle_s), "after_sleep": lambda: time.sleep(idle_s)}
    times: dict[str, list[float]] = {name: [] for name in waits}
    try:
        for _ in range(rounds):
            for name, wait in waits.items():
                wait()
                started = time.perf_counter()
                logits = session.block_logits(block)
                times[name].append(time.perf_counter() - started)
                session.state.crop(session.state.length - logits.shape[0])
    finally:
        quiet.close()
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    return {"hot_ms": ms["hot"], "after_poll_ms": ms["after_poll"], "after_sleep_ms": ms["after_sleep"],
            "idle_s": idle_s, "poll_penalty_ms": ms["after_poll"] - ms["hot"],
            "penalty_ms": ms["after_sleep"] - ms["hot"]}


def latency_summary(values: list[float]) -> dict:
    return {"p50": percentile(values, 50) * 1e3, "p99": percentile(values, 99) * 1e3,
            "mean": statistics.fmean(values) * 1e3, "rounds": len(values)}


LABELS = {"a": "(a) target alone, HF generate", "a2": "(a2) target alone, KV loop",
          "b": "(b) speculative, in-process", "c": "(c) HF assisted generation",
          "d": "(d) speculative via Mosquitto"}


def summarise(name: str, modes: dict[str, ModeResult], gamma: int) -> dict:
    ref = modes["a"].outputs
    a_tps = modes["a"].tokens_per_s
    c_tps = modes["c"].tokens_per_s if "c" in modes else None
    rows = []
    for key, m in modes.items():
        acc = m.accepted / m.drafted if m.drafted else None
        a = m.accepted / m.judged if m.judged else None
        rows.append({
            "mode": key, "label": LABELS[key], "tokens": m.tokens, "seconds": m.seconds,
            "tokens_per_s": m.tokens_per_s, "x_vs_a": m.tokens_per_s / a_tps,
            "x_vs_c": m.tokens_per_s / c_tps if c_tps else None,
            "identical_to_a": m.outputs == ref, "acceptance_rate": acc, "position_acceptance": a,
            "emitted_per_round": ((m.accepted + m.rounds) / m.rounds) if m.rounds else None,
            "formula_tokens_per_round": expected_tokens_per_round(a, gamma) if a is not None else None,
            "target_forwards_per_token": m.target_forwards / m.tokens if m.tokens else None,
            "wire_bytes_per_token": (m.wire_up + m.wire_down) / m.tokens if m.wire_up else None,
            "wire_bytes_up_per_token": m.wire_up / m.tokens if m.wire_up else None,
        })
    return {"workload": name, "modes": rows, "d_over_b": modes["d"].tokens_per_s / modes["b"].tokens_per_s,
            "d_over_c": modes["d"].tokens_per_s / c_tps if c_tps else None}


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(result: dict) -> None:
    cfg = result["config"]
    print(f"\nedgespec bench  target {cfg['target_params']:,} params, draft {cfg['draft_params']:,} params, "
          f"gamma {cfg['gamma']}, {cfg['prompts']} prompts x {cfg['reps']} reps, up to {cfg['max_new_tokens']} tokens, "
          f"{cfg['threads']} thread(s)")
    for name, w in result["workloads"].items():
        print(f"\nworkload: {name}")
        head = f"{'mode':<34}{'tok/s':>9}{'x(a)':>7}{'x(c)':>7}{'same':>6}{'accept':>8}{'a':>7}{'tok/rnd':>9}" \
               f"{'formula':>9}{'fwd/tok':>9}{'B/tok':>8}"
        print(head)
        print("-" * len(head))
        for r in w["modes"]:
            print(f"{r['label']:<34}{r['tokens_per_s']:>9.1f}{r['x_vs_a']:>7.2f}{_f(r['x_vs_c'], '.2f'):>7}"
                  f"{'yes' if r['identical_to_a'] else 'NO':>6}{_f(r['acceptance_rate'], '.3f'):>8}"
                  f"{_f(r['position_acceptance'], '.3f'):>7}"
                  f"{_f(r['emitted_per_round'], '.2f'):>9}{_f(r['formula_tokens_per_round'], '.2f'):>9}"
                  f"{_f(r['target_forwards_per_token'], '.3f'):>9}{_f(r['wire_bytes_per_token'], '.1f'):>8}")
        line = f"(d)/(b) = {w['d_over_b']:.2f}"
        if w["d_over_c"] is not None:
            line += f"   (d)/(c) = {w['d_over_c']:.2f}"
        print(line)
        print_round_costs(name, w.get("round_costs"))
    print("\nmessage payload bytes, plain -> sealed:  " + ";  ".join(
        f"{k}: {v['plain']} -> {v['sealed']} (+{v['added']})" for k, v in result["encryption_bytes"].items()))
    w = result["wakeup"]
    print(f"target forward over 5 tokens: {w['hot_ms']:.2f} ms back to back, {w['after_poll_ms']:.2f} ms after "
          f"{w['idle_s'] * 1e3:.0f} ms polling a socket (+{w['poll_penalty_ms']:.2f}), "
          f"{w['after_sleep_ms']:.2f} ms after "
          f"{w['idle_s'] * 1e3:.0f} ms asleep (+{w['penalty_ms']:.2f} ms per hand-off between processes)")
    for kind, nr in result["null_round_trip_ms"].items():
        print(f"null-model round trip through Mosquitto, {kind}: p50 {nr['p50']:.3f} ms, p99 {nr['p99']:.3f} ms "
              f"({nr['rounds']} rounds)")


def cmd_bench(args) -> int:
    if args.rtt is not None:  # the network benchmark (edgespec/bench_network.py)
        from .bench_network import cmd_rtt

        return cmd_rtt(args)
    if args.plot:
        raise ValueError("--plot draws the --rtt table: give --rtt too")
    result = run_bench(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the target alone, in-process, HF assisted and via Mosquitto")
    p.add_argument("--target-model", default="default")
    p.add_argument("--draft-model", default="default")
    p.add_argument("--pair", metavar="NAME", help="a known model as the target and its own draft "
                   "(NAME-draft in the models cache, made by `edgespec train-draft`); overrides the two above")
    p.add_argument("--gamma", type=int, default=DEFAULTS.gamma)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    p.add_argument("--prompts", type=int, default=len(TEXT_PROMPTS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--null-rounds", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workload", choices=("all", "vision", "text", "event", "general"), default="all",
                   help="vision and text for the built-in pair; event and general for a chat model")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--rtt", metavar="MS,MS,...", help="instead: every mode (edge-only, cloud-only, hybrid with "
                   "gamma 1/2/4/8, adaptive, adaptive with pipelining) through an emulated network at these "
                   "round-trip times, e.g. 0,10,25,50,100 (--prompts captions each, --reps times)")
    p.add_argument("--plot", metavar="FILE.png", help="with --rtt: tokens/s by round-trip time as a PNG chart")
    p.set_defaults(func=cmd_bench)
