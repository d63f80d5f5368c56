"""`edgespec serving`: what the verifier serves with edge drafts against the same target
serving the same captions on its own (cloud-only), both batched the same way, in-process.

Each step is one batched target forward (speculative.batch.verify_batch over a KV pool):
speculative sessions send k+1 new positions per forward, cloud-only sessions send 1. The
drafts are the draft model's own (`--drafts model`, default; drafting is the edge's work and
is not timed) or recorded ones, the target's captions with mistakes injected (`--drafts
recorded --acceptance A`, as in loadtest). All sessions start together and end with their
captions, so late forwards hold fewer sessions; `cost_model_ceiling` gives the steady-state
ratio, where every forward is full. Two cost modes:

- `--target-cost cpu`: the forwards are timed on this machine's CPU.
- `--target-cost gpu`: a labelled model of a GPU-served target replaces each forward's time:
  t = T0 + C x (new tokens in the forward). Defaults model a 7B-parameter target in bf16 on
  one A100 (2.0 TB/s HBM, 312 TFLOP/s dense bf16, datasheet figures): a forward streams the
  14 GB of weights once, T0 = 14e9 B / 2.0e12 B/s = 7.0 ms, and each token costs
  2 x 7e9 FLOP / 312e12 FLOP/s = 0.045 ms. A roofline model, not a measurement.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import DEFAULTS, resolve_model_dir, set_threads
from .toolkit import expected_tokens_per_round

GPU_T0_MS = 7.0
GPU_PER_TOKEN_MS = 0.045


def cost_model_ceiling(a: float, gamma: int, devices: int, t0_ms: float, per_token_ms: float) -> float:
    """The steady-state ratio the cost model allows: every one of `devices` sessions in every
    forward, each block of `gamma` drafts accepted position by position with probability `a`.

    Cloud-only emits `devices` tokens per forward of T0 + devices x C; speculative emits
    devices x E tokens per forward of T0 + devices x (gamma + 1) x C, with
    E = (1 - a^(gamma+1)) / (1 - a). Their ratio is E (T0/N + C) / (T0/N + (gamma+1) C): below
    (T0/N + C) / C whatever a and gamma are, and far below it for a < 1.
    """
    expected = expected_tokens_per_round(a, gamma)
    share = t0_ms / devices
    return expected * (share + per_token_ms) / (share + (gamma + 1) * per_token_ms)


def _serve(target, cases, references, *, speculative: bool, gamma: int, acceptance: float, max_new: int,
           cost: str, t0_ms: float, per_token_ms: float, draft=None) -> dict:
    from speculative.batch import KVPool, verify_batch
    from speculative.draft import Drafter
    from speculative.loop import EdgeGeneration, StopRule
    from speculative.recorded import RecordedDrafter
    from speculative.sampling import SamplingParams
    from speculative.target import TargetSession

    pool = KVPool(target)
    sessions, edges = [], []
    for i, case in enumerate(cases):
        s = TargetSession(target, SamplingParams())
        s.open(case.prompt_ids, case.features)
        drafter: Drafter | RecordedDrafter
        if draft is not None and speculative:  # the edge's draft model (its time is the edge's, not timed)
            drafter = Drafter(draft, SamplingParams())
        else:
            drafter = RecordedDrafter(references[i], target.vocab_size, acceptance, seed=i)
        drafter.start(case.prompt_ids, case.features)
        sessions.append(s)
        edges.append(EdgeGeneration(drafter, case.prompt_ids, gamma if speculative else 0,
                                    StopRule(max_new, target.eos_token_ids)))
    forwards = tokens_in = 0
    seconds = 0.0
    while True:
        live = [i for i, e in enumerate(edges) if not e.done]
        if not live:
            break
        blocks = [edges[i].next_block() for i in live]
        started = time.perf_counter()
        verdicts = verify_batch([sessions[i] for i in live], [(b.tokens, b.q) for b in blocks], pool=pool)
        elapsed = time.perf_counter() - started
        new = sum(len(b.tokens) + 1 for b in blocks)
        seconds += elapsed if cost == "cpu" else (t0_ms + per_token_ms * new) / 1000
        forwards += 1
        tokens_in += new
        for i, v in zip(live, verdicts):
            edges[i].apply(v.n_accepted, v.next_token)
    # per drafted position reached: the formula's a
    trials = sum(e.result.evaluated_positions for e in edges)
    accepted = sum(sum(e.result.accepted_per_round) for e in edges)
    generated = sum(len(e.generated) for e in edges)
    exact = sum(e.generated == references[i] for i, e in enumerate(edges))
    return {"tokens": generated, "seconds": seconds, "tokens_per_s": generated / seconds, "forwards": forwards,
            "forwards_per_token": forwards / generated, "tokens_per_forward_in": tokens_in / forwards,
            "session_forwards_per_token": sum(e.result.rounds for e in edges) / generated, "exact": exact,
            "position_acceptance": accepted / trials if trials else None}


def cmd_serving(args) -> int:
    from edgespec.workloads import references, vision_cases
    from speculative.models import load_lm

    set_threads(1)
    target = load_lm(resolve_model_dir(args.target_model, "target"))
    draft = load_lm(resolve_model_dir(args.draft_model, "draft")) if args.drafts == "model" else None
    rows = []
    for n in [int(x) for x in args.devices.split(",")]:
        cases = vision_cases(target, n, seed=950_000)
        refs = references(target, cases, args.tokens)
        common = dict(gamma=args.gamma, acceptance=args.acceptance, max_new=args.tokens, cost=args.target_cost,
                      t0_ms=args.t0_ms, per_token_ms=args.per_token_ms, draft=draft)
        spec = _serve(target, cases, refs, speculative=True, **common)
        cloud = _serve(target, cases, refs, speculative=False, **common)
        row = {"devices": n, "speculative": spec, "cloud_only": cloud,
               "ratio": spec["tokens_per_s"] / cloud["tokens_per_s"]}
        if args.target_cost == "gpu" and spec["position_acceptance"] is not None:
            a = spec["position_acceptance"]
            best = max(range(1, 33), key=lambda g: cost_model_ceiling(a, g, n, args.t0_ms, args.per_token_ms))
            row["model_ceiling"] = cost_model_ceiling(a, args.gamma, n, args.t0_ms, args.per_token_ms)
            row["model_ceiling_best_gamma"] = (best, cost_model_ceiling(a, best, n, args.t0_ms, args.per_token_ms))
        rows.append(row)
    label = ("CPU, measured" if args.target_cost == "cpu" else
             f"GPU cost model: {args.t0_ms} ms + {args.per_token_ms} ms x new tokens per forward")
    drafts = "the draft model's own drafts" if draft is not None else f"recorded drafts, acceptance {args.acceptance}"
    print(f"\nedgespec serving  target cost: {label}; {drafts}, gamma {args.gamma}\n")
    head = f"{'devices':>8}{'spec tok/s':>12}{'cloud tok/s':>13}{'ratio':>8}{'spec fwd/tok':>14}{'cloud fwd/tok':>15}" \
           f"{'batched fwds':>14}{'exact':>8}"
    print(head)
    print("-" * len(head))
    # fwd/tok: target forwards per generated token for each session (a batched forward counts
    # once for every session in it); batched fwds: forwards the target actually ran.
    for r in rows:
        s, c = r["speculative"], r["cloud_only"]
        print(f"{r['devices']:>8}{s['tokens_per_s']:>12.1f}{c['tokens_per_s']:>13.1f}{r['ratio']:>8.2f}"
              f"{s['session_forwards_per_token']:>14.3f}{c['session_forwards_per_token']:>15.3f}"
              f"{s['forwards']:>6} / {c['forwards']:<5}{min(s['exact'], c['exact']):>5}/{r['devices']}")
    if args.target_cost == "gpu":
        print("\nThe cost model's own ceiling (steady state, every session in every forward; see\n"
              "edgespec.serving.cost_model_ceiling), at the acceptance a measured in the run:")
        for r in rows:
            if "model_ceiling" in r:
                g, best = r["model_ceiling_best_gamma"]
                print(f"  {r['devices']:>4} devices: a = {r['speculative']['position_acceptance']:.3f}, ceiling "
                      f"{r['model_ceiling']:.2f}x at gamma {args.gamma}, {best:.2f}x at the best gamma ({g})")
    out = {"target_cost": args.target_cost, "t0_ms": args.t0_ms, "per_token_ms": args.per_token_ms,
           "drafts": args.drafts, "acceptance": args.acceptance if draft is None else None, "gamma": args.gamma,
           "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r["speculative"]["exact"] == r["cloud_only"]["exact"] == r["devices"] for r in rows) else 1


def register(sub) -> None:
    p = sub.add_parser("serving", help="verifier serving with edge drafts vs the target alone (cloud-only)")
    p.add_argument("--devices", default="1,8,64", help="comma-separated device counts")
    p.add_argument("--tokens", type=int, default=DEFAULTS.max_new_tokens)
    p.add_argument("--gamma", type=int, default=DEFAULTS.gamma)
    p.add_argument("--drafts", choices=("recorded", "model"), default="model",
                   help="recorded: the target's captions with mistakes at --acceptance; model: the draft model drafts")
    p.add_argument("--acceptance", type=float, default=0.9, help="recorded drafts: share left correct")
    p.add_argument("--draft-model", default="default")
    p.add_argument("--target-cost", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--t0-ms", type=float, default=GPU_T0_MS, help="gpu mode: fixed cost per forward")
    p.add_argument("--per-token-ms", type=float, default=GPU_PER_TOKEN_MS, help="gpu mode: cost per new token")
    p.add_argument("--target-model", default="default")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=cmd_serving)
