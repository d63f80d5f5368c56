"""`edgespec bench-batch`: batched vs unbatched verification on one target, step by step.

One round of B sessions x (k+1) tokens is timed four ways: B `TargetSession.verify` calls,
one `verify_batch` copying the caches, one with a `KVPool` whose slots are contiguous, and one
with every other slot of a pool (an `index_select` gather). Every draft is accepted (the most
write-back). Medians over `--reps`, the ways interleaved so that a busy machine slows them
alike; each rep starts from the same cache state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from .config import DEFAULT_MODELS_DIR, DEFAULTS, resolve_model_dir, set_threads

WAYS = ("copy", "pool", "pool_spread")
STEPS = ("gather", "forward", "verify", "scatter")


def bench_sessions(lm, count: int, context: int, k: int, seed: int) -> tuple[list, list]:
    """`count` greedy sessions with `context` cache positions each (random vision features and
    filler tokens) and, per session, the k drafts its target accepts (its greedy continuation)."""
    import numpy as np
    import torch

    from speculative.sampling import SamplingParams
    from speculative.target import TargetSession

    gen = torch.Generator().manual_seed(seed)
    sessions, blocks = [], []
    for i in range(count):
        session = TargetSession(lm, SamplingParams(), seed=seed + i)
        features = None
        if lm.projector is not None:
            features = torch.rand(lm.projector.feature_shape, generator=gen).numpy().astype(np.float32)
        bos = lm.tokenizer.bos_token_id if lm.tokenizer.bos_token_id is not None else 1
        session.open([bos, bos], features)
        count_filler = max(1, context - session.state.length)
        filler = torch.randint(4, lm.vocab_size, (count_filler,), generator=gen).tolist()
        session.state.extend([session.committed[-1], *filler[:-1]])
        session.committed += filler
        base, committed = session.state.length, list(session.committed)
        drafts: list[int] = []
        logits = session.state.extend([session.committed[-1]])[-1]
        for _ in range(k):
            drafts.append(int(logits.argmax()))
            logits = session.state.extend([drafts[-1]])[-1]
        session.state.crop(base)
        session.committed = committed
        sessions.append(session)
        blocks.append((drafts, None))
    return sessions, blocks


def bench(lm, batch_sizes: tuple[int, ...] = (1, 8, 64), k: int = 4, context: int = 40, reps: int = 15,
          seed: int = 0) -> list[dict[str, Any]]:
    """One row per batch size B: median ms per round each way, mean ms per step of each batched
    way, and the speed-up of each batched way over the unbatched calls."""
    return [bench_row(lm, batch, k, context, reps, seed) for batch in batch_sizes]


def bench_row(lm, batch: int, k: int, context: int, reps: int, seed: int) -> dict[str, Any]:
    from speculative.batch import BatchProfile, KVPool

    sessions, blocks = bench_sessions(lm, 2 * batch, context, k, seed)
    snapshot = [(s.state.length, list(s.committed)) for s in sessions]

    def restore() -> None:
        for session, (length, committed) in zip(sessions, snapshot):
            session.state.crop(length)
            session.committed = list(committed)

    pool = KVPool(lm, slots=2 * batch, positions=context + k + 1)
    for session in sessions:  # slot order = session order, so sessions[:batch] are contiguous
        pool.admit(session)
    ways = (("copy", sessions[:batch], blocks[:batch], None), ("pool", sessions[:batch], blocks[:batch], pool),
            ("pool_spread", sessions[::2], blocks[::2], pool))
    times: dict[str, list[float]] = {"unbatched": [], **{name: [] for name in WAYS}}
    profiles = {name: BatchProfile() for name in WAYS}
    for rep in range(reps + 2):  # two warm-up reps
        elapsed = time_rep(ways, sessions, pool, restore, k, profiles if rep >= 2 else None)
        if rep >= 2:
            for name, seconds in elapsed.items():
                times[name].append(seconds)
    row: dict[str, Any] = {"batch": batch, "k": k, "context": context}
    for name, values in times.items():
        row[f"{name}_ms"] = 1e3 * statistics.median(values)
    for name, profile in profiles.items():
        calls = max(1, profile.calls)
        for step in STEPS:
            row[f"{name}_{step}_ms"] = 1e3 * getattr(profile, f"{step}_s") / calls
    for name in WAYS:
        row[f"{name}_speedup"] = row["unbatched_ms"] / row[f"{name}_ms"]
    return row


def time_rep(ways, sessions: list, pool, restore, k: int, profiles) -> dict[str, float]:
    """Seconds of one round each way, the unbatched calls first (on the first way's group);
    `profiles` (None during warm-up) collects the batched ways' steps."""
    from speculative.batch import BatchProfile, verify_batch

    _, group, group_blocks, _ = ways[0]
    started = time.perf_counter()
    for session, (tokens, q) in zip(group, group_blocks):
        session.verify(tokens, q)
    elapsed = {"unbatched": time.perf_counter() - started}
    restore()
    for session in sessions:  # the unbatched calls moved caches out; the pool reads them back
        pool.admit(session)
    for name, members, member_blocks, use_pool in ways:
        profile = BatchProfile() if profiles is None else profiles[name]
        started = time.perf_counter()
        verdicts = verify_batch(members, member_blocks, pool=use_pool, profile=profile)
        elapsed[name] = time.perf_counter() - started
        assert all(v.n_accepted == k for v in verdicts)
        restore()
        if name == "copy":
            for session in members:
                pool.admit(session)
    return elapsed


# --- the loadtest's workload in one process ------------------------------------------------


def replay(lm, devices: int = 16, tokens: int = 48, acceptance: float = 0.9, gamma: int = 4,
           seed: int = 0) -> dict[str, Any]:
    """The model work of `edgespec loadtest` (one verifier, one session per device, greedy,
    recorded drafts of the target's own answers with mistakes) in one process, without the
    broker: every session opens at once carrying its first block, then each round verifies
    every live session's block. Batched as the verifier batches (the opens prefilled together
    with `open_batch`, their blocks and each later round with one `verify_batch` over a
    KVPool, a round of one block with `TargetSession.verify`) and unbatched (each open with
    its block in one forward, then one forward per block). CPU seconds of this thread per
    step; every session's output is checked against its recording."""
    from edgespec.workloads import chat_cases, has_chat_template, vision_cases
    from edgespec.workloads import references as target_references
    from speculative.batch import BatchProfile, KVPool, verify_batch
    from speculative.loop import EdgeGeneration, StopRule
    from speculative.prefill import open_batch
    from speculative.recorded import RecordedDrafter
    from speculative.sampling import SamplingParams
    from speculative.target import TargetSession

    cases = chat_cases(lm, "event", devices) if has_chat_template(lm) else vision_cases(lm, devices)
    refs = target_references(lm, cases, tokens)

    def sessions() -> list[tuple[EdgeGeneration, TargetSession]]:
        out = []
        for i, case in enumerate(cases):
            drafter = RecordedDrafter(refs[i], lm.vocab_size, acceptance, seed=seed + i)
            drafter.start(case.prompt_ids, case.features)
            edge = EdgeGeneration(drafter, case.prompt_ids, gamma, StopRule(tokens, lm.eos_token_ids))
            out.append((edge, TargetSession(lm, SamplingParams(), seed=seed + i)))
        return out

    result: dict[str, Any] = {"devices": devices, "tokens": tokens, "acceptance": acceptance, "gamma": gamma}
    # Unbatched.
    live = sessions()
    forwards = 0
    started = time.thread_time()
    for (edge, target), case in zip(live, cases):
        block = edge.next_block()
        v = target.open_and_verify(case.prompt_ids, case.features, block.tokens, block.q)
        edge.apply(v.n_accepted, v.next_token)
        forwards += 1
    opens = time.thread_time() - started
    started = time.thread_time()
    while any(not edge.done for edge, _ in live):
        for edge, target in live:
            if not edge.done:
                block = edge.next_block()
                v = target.verify(block.tokens, block.q)
                edge.apply(v.n_accepted, v.next_token)
                forwards += 1
    verifies = time.thread_time() - started
    exact = sum(edge.generated == ref for (edge, _), ref in zip(live, refs))
    result["unbatched"] = {"open_and_verify_s": opens, "verify_s": verifies, "total_s": opens + verifies,
                           "forwards": forwards, "exact": exact,
                           "tokens": sum(len(edge.generated) for edge, _ in live)}
    # Batched.
    live = sessions()
    pool = KVPool(lm, slots=devices, positions=128)
    profile, sizes = BatchProfile(), []
    single_s = 0.0
    started = time.thread_time()
    open_batch([t for _, t in live], [(c.prompt_ids, c.features) for c in cases])
    prefill_s = time.thread_time() - started
    while True:
        round_ = [(edge, target) for edge, target in live if not edge.done]
        if not round_:
            break
        blocks = [edge.next_block() for edge, _ in round_]
        sizes.append(len(round_))
        if len(round_) == 1:
            started = time.thread_time()
            verdicts = [round_[0][1].verify(blocks[0].tokens, blocks[0].q)]
            single_s += time.thread_time() - started
        else:
            verdicts = verify_batch([t for _, t in round_], [(b.tokens, b.q) for b in blocks], pool=pool,
                                    profile=profile)
        for (edge, target), v in zip(round_, verdicts):
            edge.apply(v.n_accepted, v.next_token)
            if edge.done:
                pool.discard(target)
    exact_b = sum(edge.generated == ref for (edge, _), ref in zip(live, refs))
    result["batched"] = {"open_batch_s": prefill_s, **{f"verify_batch_{k}": v for k, v in profile.as_dict().items()},
                         "single_verify_s": single_s, "total_s": prefill_s + profile.total_s + single_s,
                         "batch_sizes": sizes, "exact": exact_b,
                         "tokens": sum(len(edge.generated) for edge, _ in live)}
    result["speedup"] = result["unbatched"]["total_s"] / result["batched"]["total_s"]
    return result


def format_replay(r: dict[str, Any]) -> str:
    u, b = r["unbatched"], r["batched"]
    return "\n".join([
        (f"replay of the loadtest's model work: {r['devices']} sessions, up to {r['tokens']} tokens, "
        f"acceptance {r['acceptance']}, gamma {r['gamma']}; CPU seconds, one thread"),
        (f"unbatched: {u['total_s']:.2f} s = opens with their first block {u['open_and_verify_s']:.2f} "
        f"+ later blocks {u['verify_s']:.2f} ({u['forwards']} forwards; {u['exact']} of {r['devices']} exact, "
        f"{u['tokens']} tokens)"),
        (f"batched:   {b['total_s']:.2f} s = open_batch {b['open_batch_s']:.2f} + verify_batch "
        f"{b['verify_batch_total_s']:.2f} (gather {b['verify_batch_gather_s']:.2f}, forward "
        f"{b['verify_batch_forward_s']:.2f}, judge {b['verify_batch_verify_s']:.2f}, scatter "
        f"{b['verify_batch_scatter_s']:.2f}) + single blocks {b['single_verify_s']:.2f} "
        f"({b['exact']} of {r['devices']} exact, {b['tokens']} tokens)"),
        f"rounds (blocks each): {' '.join(map(str, b['batch_sizes']))}",
        f"unbatched / batched: {r['speedup']:.2f}x",
    ])


def format_bench(rows: list[dict[str, Any]]) -> str:
    """The table `edgespec bench-batch` prints (ms per round; x = unbatched / batched)."""
    header = ["B", "unbatched"]
    for name in WAYS:
        header += [f"{name}", *(f"{step[:4]}" for step in STEPS), "x"]
    lines = [
        "ms per round of B sessions x (k+1) tokens. copy: no pool; pool: KVPool, contiguous slots;",
        "pool_spread: KVPool, every other slot (index_select gather). Step columns are means.",
        " ".join(f"{h:>11}" if i == 2 or h in WAYS else f"{h:>7}" for i, h in enumerate(header)),
    ]
    for r in rows:
        cells = [f"{r['batch']:>7}", f"{r['unbatched_ms']:>7.2f}"]
        for name in WAYS:
            cells.append(f"{r[f'{name}_ms']:>11.2f}")
            cells += [f"{r[f'{name}_{step}_ms']:>7.2f}" for step in STEPS]
            cells.append(f"{r[f'{name}_speedup']:>7.1f}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def cmd_bench_batch(args: argparse.Namespace) -> int:
    from speculative.models import load_lm

    set_threads(args.threads)
    lm = load_lm(resolve_model_dir(args.target_model, "target"))
    if args.replay:
        result = replay(lm, args.replay, args.tokens, args.acceptance, args.k)
        print(f"target {args.target_model} ({lm.num_parameters:,} parameters), {args.threads} thread(s)")
        print(format_replay(result))
        if args.json:
            args.json.write_text(json.dumps({"threads": args.threads, "replay": result}, indent=2))
        return 0 if result["unbatched"]["exact"] == result["batched"]["exact"] == args.replay else 1
    rows = bench(lm, tuple(args.batch), k=args.k, context=args.context, reps=args.reps)
    print(f"target {args.target_model} ({lm.num_parameters:,} parameters), {args.threads} thread(s)")
    print(format_bench(rows))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-model", type=Path, default=DEFAULT_MODELS_DIR / "target",
                   help="model folder, or a fetched model's name (edgespec models list)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--k", type=int, default=DEFAULTS.gamma, help="drafts per block")
    p.add_argument("--context", type=int, default=40, help="cache positions per session")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (verifier default 1)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    p.add_argument("--replay", type=int, metavar="DEVICES",
                   help="instead: the model work of `edgespec loadtest` with this many devices in one process, "
                        "batched and unbatched, step by step (--k is gamma)")
    p.add_argument("--tokens", type=int, default=DEFAULTS.max_new_tokens, help="with --replay: max new tokens")
    p.add_argument("--acceptance", type=float, default=0.9, help="with --replay: share of drafts left correct")


def register(sub) -> None:
    p = sub.add_parser("bench-batch", help="batched vs unbatched verification on one target, step by step",
                       description="Batched vs unbatched verification on one target.")
    add_arguments(p)
    p.set_defaults(func=cmd_bench_batch)
