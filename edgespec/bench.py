"""`edgespec bench`: one process, one pair, one prompt set, every way of generating.

(a)  the target alone, Hugging Face `generate()` (cloud-only autoregressive)
(a2) the target alone, the project's KV-cached loop (same forwards, less per-call overhead)
(b)  the speculative loop in-process, no broker
(c)  Hugging Face assisted generation (`generate(assistant_model=draft)`)
(d)  the full path: edge session -> Mosquitto -> verifier process -> back
null protocol-only round trip through Mosquitto with a model-free verifier

Modes run interleaved, rep by rep, so machine noise hits them alike; ratios come from one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import resolve_model_dir, set_threads

REPO = Path(__file__).resolve().parent.parent
TEXT_PROMPTS = [
    "a red circle", "on the left a blue", "the camera sees", "a small green triangle",
    "near the top a yellow", "a white square moves", "two objects", "an orange circle stays",
]


@dataclass
class Case:
    prompt_ids: list[int]
    features: np.ndarray | None = None


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
        self.outputs.append(out)
        self.seconds += seconds
        self.tokens += len(out)
        self.target_forwards += forwards
        self.wire_up += up
        self.wire_down += down


class ForwardCounter:
    """Counts calls of a model's forward (HF generate gives no such figure itself)."""

    def __init__(self, model):
        self.model, self.calls, self._handle = model, 0, None

    def __enter__(self):
        def hook(*_):
            self.calls += 1

        self._handle = self.model.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def expected_tokens_per_round(a: float, gamma: int) -> float:
    """(1 - a^(g+1)) / (1 - a): tokens per round for i.i.d. acceptance a and draft length g."""
    return gamma + 1.0 if a >= 1.0 else (1 - a ** (gamma + 1)) / (1 - a)


# ------------------------------------------------------------------ the modes


def hf_generate(target, case: Case, n: int, assistant=None, gamma: int = 4) -> tuple[list[int], float, int]:
    ids = torch.tensor([case.prompt_ids])
    kwargs = dict(do_sample=False, max_new_tokens=n, attention_mask=torch.ones_like(ids))
    if assistant is not None:
        cfg = assistant.generation_config
        cfg.num_assistant_tokens = gamma
        cfg.num_assistant_tokens_schedule = "constant"
        cfg.assistant_confidence_threshold = 0.0
        kwargs["assistant_model"] = assistant
    with ForwardCounter(target.model) as counter, torch.inference_mode():
        started = time.perf_counter()
        out = target.model.generate(ids, **kwargs)
        seconds = time.perf_counter() - started
    return out[0, len(case.prompt_ids):].tolist(), seconds, counter.calls


async def broker_sessions(url: str, draft, cases: list[Case], gamma: int, n: int, device: str):
    from camera_node.link import EdgeLink
    from camera_node.session import EdgeRequest, run_edge_session

    async with EdgeLink(url, device) as link:
        return [await run_edge_session(link, draft, EdgeRequest(c.prompt_ids, c.features, gamma=gamma, max_new_tokens=n))
                for c in cases]


async def null_round_trips(url: str, rounds: int, gamma: int) -> list[float]:
    from camera_node.link import EdgeLink
    from schemas import DraftMsg

    async with EdgeLink(url, "bench-null") as link:
        channel = link.channel(os.urandom(16))
        channel.verifier_id = "null"
        latencies = []
        for seq in range(rounds):
            msg = DraftMsg(channel.session_id, seq, 10 + seq, list(range(gamma)), None)
            started = time.perf_counter()
            await channel.exchange(msg)
            latencies.append(time.perf_counter() - started)
        return latencies


def spawn(args: list[str], ready_text: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", "EDGESPEC_THREADS": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if ready_text in line:
            return proc
    raise RuntimeError(f"{args} exited before it was ready")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


# ------------------------------------------------------------------ driver


def run_bench(args) -> dict:
    from broker.runner import MosquittoBroker
    from speculative.loop import generate_autoregressive, run_local
    from speculative.models import load_lm
    from speculative.sampling import SamplingParams

    set_threads(args.threads)
    target_dir, draft_dir = resolve_model_dir(args.target_model, "target"), resolve_model_dir(args.draft_model, "draft")
    target, draft = load_lm(target_dir), load_lm(draft_dir)
    cases = [Case(target.encode(p)) for p in TEXT_PROMPTS[: args.prompts]]
    n, gamma = args.max_new_tokens, args.gamma
    modes = {k: ModeResult(k) for k in ("a", "a2", "b", "c", "d")}
    greedy = SamplingParams()

    with MosquittoBroker(port=0) as broker:
        verifier = spawn(["-m", "edgespec.cli", "verifier", "--broker", broker.url, "--target-model", str(target_dir),
                          "--verifier-id", "bench-verifier"], "ready on")
        null = spawn(["-m", "edgespec.null_verifier", "--broker", broker.url], "null verifier ready")
        try:
            asyncio.run(broker_sessions(broker.url, draft, cases[:1], gamma, 4, "bench-warmup"))  # warm up
            for rep in range(args.reps):
                for case in cases:
                    out, s, f = hf_generate(target, case, n)
                    modes["a"].add(out, s, f)
                    r = generate_autoregressive(target, case.prompt_ids, None, greedy, n)
                    modes["a2"].add(r.token_ids, r.seconds, r.target_forwards)
                    r = run_local(target, draft, case.prompt_ids, None, greedy, gamma, n)
                    modes["b"].add(r.token_ids, r.seconds, r.target_forwards, r)
                    out, s, f = hf_generate(target, case, n, assistant=draft.model, gamma=gamma)
                    modes["c"].add(out, s, f)
                outs = asyncio.run(broker_sessions(broker.url, draft, cases, gamma, n, f"bench-{rep}"))
                for o in outs:
                    r = o.result
                    modes["d"].add(r.token_ids, r.seconds, r.target_forwards, r, o.traffic.up, o.traffic.down)
            null_lat = asyncio.run(null_round_trips(broker.url, args.null_rounds, gamma))[args.null_rounds // 10:]
        finally:
            for proc in (verifier, null):
                proc.terminate()
                proc.wait(timeout=10)
    return report(args, target, draft, modes, null_lat)


def report(args, target, draft, modes: dict[str, ModeResult], null_lat: list[float]) -> dict:
    ref = modes["a"].outputs
    a_tps, c_tps = modes["a"].tokens_per_s, modes["c"].tokens_per_s
    labels = {"a": "(a) target alone, HF generate", "a2": "(a2) target alone, KV loop",
              "b": "(b) speculative, in-process", "c": "(c) HF assisted generation", "d": "(d) speculative via Mosquitto"}
    rows = []
    for key, m in modes.items():
        acc = m.accepted / m.drafted if m.drafted else None
        a = m.accepted / m.judged if m.judged else None
        rows.append({
            "mode": key, "label": labels[key], "tokens": m.tokens, "seconds": m.seconds,
            "tokens_per_s": m.tokens_per_s, "x_vs_a": m.tokens_per_s / a_tps, "x_vs_c": m.tokens_per_s / c_tps,
            "identical_to_a": m.outputs == ref, "acceptance_rate": acc, "position_acceptance": a,
            "tokens_per_round": (m.tokens / m.rounds) if m.rounds else None,
            "emitted_per_round": ((m.accepted + m.rounds) / m.rounds) if m.rounds else None,
            "formula_tokens_per_round": expected_tokens_per_round(a, args.gamma) if a is not None else None,
            "target_forwards_per_token": m.target_forwards / m.tokens if m.tokens else None,
            "wire_bytes_per_token": (m.wire_up + m.wire_down) / m.tokens if m.wire_up else None,
            "wire_bytes_up_per_token": m.wire_up / m.tokens if m.wire_up else None,
        })
    result = {
        "config": {"target": str(target.path), "draft": str(draft.path), "target_params": target.num_parameters,
                   "draft_params": draft.num_parameters, "gamma": args.gamma, "max_new_tokens": args.max_new_tokens,
                   "prompts": args.prompts, "reps": args.reps, "threads": args.threads, "torch": torch.__version__},
        "modes": rows,
        "null_round_trip_ms": {"p50": percentile(null_lat, 50) * 1e3, "p99": percentile(null_lat, 99) * 1e3,
                               "mean": statistics.fmean(null_lat) * 1e3, "rounds": len(null_lat)},
        "d_over_b": modes["d"].tokens_per_s / modes["b"].tokens_per_s,
        "d_over_c": modes["d"].tokens_per_s / c_tps,
    }
    print_table(result)
    return result


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(result: dict) -> None:
    cfg = result["config"]
    print(f"\nedgespec bench  target {cfg['target_params']:,} params, draft {cfg['draft_params']:,} params, "
          f"gamma {cfg['gamma']}, {cfg['prompts']} prompts x {cfg['reps']} reps x {cfg['max_new_tokens']} tokens, "
          f"{cfg['threads']} thread(s)\n")
    head = f"{'mode':<34}{'tok/s':>9}{'x(a)':>7}{'x(c)':>7}{'same':>6}{'accept':>8}{'a':>7}{'tok/rnd':>9}{'formula':>9}" \
           f"{'fwd/tok':>9}{'B/tok':>8}"
    print(head)
    print("-" * len(head))
    for r in result["modes"]:
        print(f"{r['label']:<34}{r['tokens_per_s']:>9.1f}{r['x_vs_a']:>7.2f}{r['x_vs_c']:>7.2f}"
              f"{'yes' if r['identical_to_a'] else 'NO':>6}{_f(r['acceptance_rate'], '.3f'):>8}"
              f"{_f(r['position_acceptance'], '.3f'):>7}"
              f"{_f(r['emitted_per_round'], '.2f'):>9}{_f(r['formula_tokens_per_round'], '.2f'):>9}"
              f"{_f(r['target_forwards_per_token'], '.3f'):>9}{_f(r['wire_bytes_per_token'], '.1f'):>8}")
    nr = result["null_round_trip_ms"]
    print(f"\nnull-model round trip through Mosquitto: p50 {nr['p50']:.3f} ms, p99 {nr['p99']:.3f} ms "
          f"({nr['rounds']} rounds)")
    print(f"(d)/(b) = {result['d_over_b']:.2f}   (d)/(c) = {result['d_over_c']:.2f}")


def cmd_bench(args) -> int:
    result = run_bench(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the target alone, in-process, HF assisted and via Mosquitto")
    p.add_argument("--target-model", default="default")
    p.add_argument("--draft-model", default="default")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--prompts", type=int, default=len(TEXT_PROMPTS))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--null-rounds", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=cmd_bench)
