"""How good a draft is for its target: greedy acceptance on held-out prompts and cost per token.

Acceptance comes from the project's own speculative loop (in-process, gamma 4, greedy) on
prompts no draft was trained on (event descriptions and general questions); every output is
checked token for token against the target alone. Cost per token is the median time of a
one-token forward with the KV cache, draft against target on the same thread count, in rounds
back to back (the median of the rounds' ratios): the Hugging Face forward of each (`CachedLM`,
a reduced head's logits spread over all ids), and the forward the drafter runs
(`speculative.lean.draft_state`: the lean one where it applies, a reduced head's K logits).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from .lm_prompts import chat_ids, prompt_set


def cost_per_token(lm, prompt_ids: list[int], steps: int = 16, drafter: bool = False) -> float:
    """Median seconds of a one-token forward after ``prompt_ids`` (KV cache in use): the Hugging
    Face forward (`CachedLM`), or with ``drafter`` the one a `Drafter` runs."""
    from speculative.lean import draft_state
    from speculative.models import CachedLM

    state = draft_state(lm) if drafter else CachedLM(lm)
    if isinstance(state, CachedLM) and drafter:
        state.full_vocab = False  # as the drafter reads a reduced head
    state.prefill(prompt_ids)
    times = []
    token = prompt_ids[-1]
    with torch.no_grad():
        for _ in range(steps):
            t0 = time.perf_counter()
            logits = state.extend([token])
            times.append(time.perf_counter() - t0)
            row = logits[-1].argmax()
            token = int(lm.head_token_ids(row) if drafter else row)  # the drafter reads the head's rows
    return statistics.median(times)


def evaluate_draft(target_dir: Path, draft_dir: Path, *, events: int = 12, general: int = 6, gamma: int = 4,
                   max_new_tokens: int = 48, threads: int = 1, cost_rounds: int = 7) -> dict:
    from speculative.loop import generate_autoregressive, run_local
    from speculative.models import load_lm
    from speculative.sampling import SamplingParams

    torch.set_num_threads(threads)
    target, draft = load_lm(target_dir), load_lm(draft_dir)
    greedy = SamplingParams()
    rows = {}
    for kind, n in (("event", events), ("general", general)):
        accepted = drafted = judged = rounds = tokens = 0
        identical = True
        for prompt in prompt_set(kind, n, held_out=True):
            ids = chat_ids(target.tokenizer, prompt)
            spec = run_local(target, draft, ids, None, greedy, gamma, max_new_tokens)
            alone = generate_autoregressive(target, ids, None, greedy, max_new_tokens)
            identical &= spec.token_ids == alone.token_ids
            accepted += sum(spec.accepted_per_round)
            drafted += sum(spec.drafted_per_round)
            judged += spec.evaluated_positions
            rounds += spec.rounds
            tokens += len(spec.token_ids)
        rows[kind] = {"prompts": n, "acceptance": accepted / max(drafted, 1),
                      "position_acceptance": accepted / max(judged, 1),
                      "tokens_per_round": tokens / max(rounds, 1), "identical_to_target": identical}
    probe = chat_ids(target.tokenizer, prompt_set("event", 1, held_out=True)[0])
    # Rounds of target, draft, drafter back to back; medians of the times and of each round's
    # ratios, so that a shared CPU's load, which changes from minute to minute, cancels out.
    times: dict[str, list[float]] = {"target": [], "draft": [], "drafter": []}
    shares: dict[str, list[float]] = {"draft": [], "drafter": []}
    for _ in range(cost_rounds):
        times["target"].append(cost_per_token(target, probe))
        times["draft"].append(cost_per_token(draft, probe))
        times["drafter"].append(cost_per_token(draft, probe, drafter=True))
        for role, ratios in shares.items():
            ratios.append(times[role][-1] / times["target"][-1])
    ms = {role: round(statistics.median(t) * 1000, 2) for role, t in times.items()}
    return {"gamma": gamma, "threads": threads, "head_vocab": draft.head_size, "vocab": draft.vocab_size, **rows,
            "cost_rounds": cost_rounds, "target_ms_per_token": ms["target"], "draft_ms_per_token": ms["draft"],
            "draft_cost_share": round(statistics.median(shares["draft"]), 3), "drafter_ms_per_token": ms["drafter"],
            "drafter_cost_share": round(statistics.median(shares["drafter"]), 3)}


def format_report(report: dict) -> str:
    head = ("full" if report["head_vocab"] == report["vocab"] else f"{report['head_vocab']:,} of")
    lines = [f"draft output head: {head} {report['vocab']:,} ids",
             f"{'prompts':10s} {'n':>3s} {'accept':>7s} {'a':>6s} {'tok/rnd':>8s}  same as target"]
    for kind in ("event", "general"):
        r = report[kind]
        lines.append(f"{kind:10s} {r['prompts']:3d} {r['acceptance']:7.3f} {r['position_acceptance']:6.3f} "
                     f"{r['tokens_per_round']:8.2f}  {'yes' if r['identical_to_target'] else 'NO'}")
    lines.append(f"one-token forward: target {report['target_ms_per_token']} ms, draft "
                 f"{report['draft_ms_per_token']} ms ({report['draft_cost_share']:.0%} of the target), "
                 f"{report['threads']} thread(s), median of {report['cost_rounds']} rounds")
    lines.append(f"the drafter's forward: {report['drafter_ms_per_token']} ms "
                 f"({report['drafter_cost_share']:.0%} of the target's forward)")
    return "\n".join(lines)
