"""`edgespec loadtest`: many simulated devices against a pool of verifier processes.

The devices replay recorded drafts (speculative/recorded.py): the target's own greedy
captions (for a chat model such as smollm2-135m: its greedy answers to held-out camera event
descriptions in its chat template) with mistakes injected at a chosen rate, so the verifiers
do their real work while the devices cost almost nothing, and every session's output is
checked against its recording. With `--batching both` the same load runs with batching on
and off in one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

from .config import DEFAULTS, resolve_model_dir, set_threads
from .toolkit import percentile, spawn
from .verifier_stats import StatsWatcher

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _spawn_verifier(url: str, target_dir: Path, vid: str, prefix: str, max_batch: int, window_ms: float,
                    max_sessions: int, busy_poll_ms: float = 0.0) -> subprocess.Popen:
    args = ["-m", "edgespec.cli", "verifier", "--broker", url, "--target-model", str(target_dir),
            "--verifier-id", vid, "--prefix", prefix, "--max-batch", str(max_batch),
            "--batch-window-ms", str(window_ms), "--max-sessions", str(max_sessions),
            "--busy-poll-ms", str(busy_poll_ms)]
    try:
        return spawn(args, "ready on")
    except RuntimeError:
        raise RuntimeError(f"verifier {vid} did not start") from None


async def _run_devices(url: str, prefix: str, lm, cases, references, args, procs) -> dict:
    from camera_node.link import EdgeLink
    from camera_node.session import EdgeRequest, run_edge_session
    from schemas import Topics
    from security.channel import DeviceKeys
    from security.dev_identity import ensure_dev_identity
    from speculative.recorded import RecordedDrafter

    topics = Topics(prefix)
    async with StatsWatcher(url, topics.all_verifier_stats()) as watcher:
        links = []
        for i in range(args.devices):
            device_id = f"load-{i}"
            keys = DeviceKeys.from_bundle(ensure_dev_identity(None, device_id, broker_url=url, prefix=prefix)[0])
            links.append(EdgeLink(url, device_id, topics=topics, keys=keys, timeout_s=120))
        await asyncio.gather(*(link.__aenter__() for link in links))

        async def device(i: int, link):
            # Session after session (one caption per event), so the load stays at N devices.
            done = []
            for j in range(args.sessions_per_device):
                c = (i + j * args.devices) % len(cases)
                drafter = RecordedDrafter(references[c], lm.vocab_size, args.acceptance, seed=i * 1000 + j)
                req = EdgeRequest(cases[c].prompt_ids, cases[c].features, gamma=args.gamma,
                                  max_new_tokens=args.tokens, draft_ahead=False, busy_poll_s=0.0,
                                  block_in_open=not args.no_block_in_open)
                done.append((c, await run_edge_session(link, lm, req, drafter=drafter)))
            return done

        cpu_before = [cpu_seconds(p.pid) for p in procs]
        started = time.perf_counter()
        outcomes = [o for per_device in await asyncio.gather(*(device(i, link) for i, link in enumerate(links)))
                    for o in per_device]
        wall = time.perf_counter() - started
        verifier_cpu = sum(cpu_seconds(p.pid) - c for p, c in zip(procs, cpu_before))
        await asyncio.gather(*(link.__aexit__(None, None, None) for link in links))
        stats = await watcher.stop(procs)  # stopped verifiers publish their final stats
        return {"outcomes": outcomes, "wall": wall, "stats": stats, "verifier_cpu": verifier_cpu}


def run_mode(args, target_dir, lm, cases, references, batching: bool) -> dict:
    from broker.runner import MosquittoBroker

    prefix = f"load-{'b' if batching else 'n'}/v1"
    with MosquittoBroker(port=0, extra_config="max_connections -1") as broker:
        procs = [_spawn_verifier(broker.url, target_dir, f"lv-{j}", prefix, args.max_batch if batching else 1,
                                 args.window_ms, max(1024, args.devices * 2), args.busy_poll_ms)
                 for j in range(args.verifiers)]
        try:
            res = asyncio.run(_run_devices(broker.url, prefix, lm, cases, references, args, procs))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                p.wait(timeout=10)
    cases_run = [c for c, _ in res["outcomes"]]
    outcomes = [o for _, o in res["outcomes"]]
    exact = sum(o.result.token_ids == references[c] for c, o in zip(cases_run, outcomes))
    tokens = sum(len(o.result.token_ids) for o in outcomes)
    rounds = [r for o in outcomes for r in o.round_seconds]
    # A session's first round carries its OPEN (the prefill too), unless --no-block-in-open.
    first = [o.round_seconds[0] for o in outcomes if o.round_seconds]
    later = [r for o in outcomes for r in o.round_seconds[1:]]
    hist: Counter[int] = Counter()
    evictions = resyncs = 0
    model_cpu_s = 0.0  # the verifiers' CPU time in the model calls (forwards, judging, caches)
    for s in res["stats"].values():
        hist.update({int(k): v for k, v in s.get("batch_sizes", {}).items()})
        timed = s.get("batch_times", {}).get("all", {})
        model_cpu_s += timed.get("model_cpu_ms", {}).get("mean", 0.0) * timed.get("batches", 0) / 1e3
        evictions += s.get("evictions", 0)
        resyncs += s.get("stats", {}).get("resyncs", 0)
    forwards = sum(k * v for k, v in hist.items())
    return {
        "batching": batching, "devices": args.devices, "verifiers": args.verifiers,
        "sessions_per_device": args.sessions_per_device,
        "sessions_completed": len(outcomes), "sessions_exact": exact, "tokens": tokens, "seconds": res["wall"],
        "tokens_per_s": tokens / res["wall"], "verifier_cpu_s": res["verifier_cpu"],
        "tokens_per_verifier_cpu_s": tokens / res["verifier_cpu"] if res["verifier_cpu"] else None,
        "verifier_model_cpu_s": model_cpu_s,
        "round_ms_p50": percentile(rounds, 50) * 1e3,
        "round_ms_p99": percentile(rounds, 99) * 1e3,
        "first_round_ms_p50": percentile(first, 50) * 1e3, "first_round_ms_p99": percentile(first, 99) * 1e3,
        "later_round_ms_p50": percentile(later, 50) * 1e3 if later else None,
        "later_round_ms_p99": percentile(later, 99) * 1e3 if later else None,
        "batch_size_histogram": dict(sorted(hist.items())),
        "batched_forwards": sum(hist.values()), "blocks_verified": forwards,
        "evictions": evictions, "resyncs": resyncs + sum(o.resyncs for o in outcomes),
    }


def cmd_loadtest(args) -> int:
    from edgespec.workloads import chat_cases, has_chat_template, vision_cases
    from edgespec.workloads import references as target_references
    from speculative.models import load_lm

    set_threads(1)
    target_dir = resolve_model_dir(args.target_model, "target")
    target = load_lm(target_dir)
    # The devices replay recordings: a model of theirs only gives the tokenizer and stop tokens.
    lm = target if args.draft_model is None else load_lm(resolve_model_dir(args.draft_model, "draft"))
    distinct = min(args.devices * args.sessions_per_device, args.distinct)
    cases = (chat_cases(target, "event", distinct) if has_chat_template(target)  # a real chat model
             else vision_cases(target, distinct))
    references = target_references(target, cases, args.tokens)
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.batching]
    results = [run_mode(args, target_dir, lm, cases, references, b) for b in modes]
    print(f"\nedgespec loadtest  {args.devices} devices x {args.sessions_per_device} session(s), "
          f"{args.verifiers} verifier(s), recorded drafts with "
          f"acceptance {args.acceptance}, gamma {args.gamma}, up to {args.tokens} tokens\n")
    head = f"{'batching':<10}{'sessions':>9}{'exact':>7}{'tokens':>8}{'tok/s':>9}{'tok/cpu-s':>10}" \
           f"{'p50 ms':>9}{'p99 ms':>9}{'forwards':>10}{'evict':>7}{'resync':>8}  batch sizes"
    print(head)
    print("-" * (len(head) + 20))
    for r in results:
        hist = " ".join(f"{k}:{v}" for k, v in r["batch_size_histogram"].items())
        print(f"{'on' if r['batching'] else 'off':<10}{r['sessions_completed']:>9}{r['sessions_exact']:>7}"
              f"{r['tokens']:>8}{r['tokens_per_s']:>9.1f}{r['tokens_per_verifier_cpu_s']:>10.1f}"
              f"{r['round_ms_p50']:>9.1f}{r['round_ms_p99']:>9.1f}"
              f"{r['batched_forwards']:>10}{r['evictions']:>7}{r['resyncs']:>8}  {hist}")
    for r in results:
        later = "" if r["later_round_ms_p50"] is None else \
            f"; later rounds p50 {r['later_round_ms_p50']:.1f}, p99 {r['later_round_ms_p99']:.1f}"
        carries = "" if args.no_block_in_open else " (it carries the open)"
        print(f"verifier CPU s, batching {'on' if r['batching'] else 'off'}: {r['verifier_cpu_s']:.2f}, "
              f"{r['verifier_model_cpu_s']:.2f} of them in the model calls")
        print(f"round ms, batching {'on' if r['batching'] else 'off'}: first round{carries} "
              f"p50 {r['first_round_ms_p50']:.1f}, p99 {r['first_round_ms_p99']:.1f}{later}")
    out = {"results": results}
    if len(results) == 2:
        out["batching_speedup"] = results[0]["tokens_per_s"] / results[1]["tokens_per_s"]
        out["batching_speedup_per_verifier_cpu"] = (results[0]["tokens_per_verifier_cpu_s"]
                                                    / results[1]["tokens_per_verifier_cpu_s"])
        print(f"\nthroughput with batching / without: {out['batching_speedup']:.2f}x wall clock, "
              f"{out['batching_speedup_per_verifier_cpu']:.2f}x per verifier CPU-second")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    ok = all(r["sessions_exact"] == r["sessions_completed"] == args.devices * args.sessions_per_device
             for r in results)
    return 0 if ok else 1


def register(sub) -> None:
    p = sub.add_parser("loadtest", help="simulated devices against verifier processes through a local broker")
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--verifiers", type=int, default=1)
    p.add_argument("--tokens", type=int, default=DEFAULTS.max_new_tokens, help="max new tokens per session")
    p.add_argument("--sessions-per-device", type=int, default=1,
                   help="captions each device asks for, one after another")
    p.add_argument("--acceptance", type=float, default=0.9, help="share of recorded drafts left correct")
    p.add_argument("--gamma", type=int, default=DEFAULTS.gamma)
    p.add_argument("--batching", choices=("both", "on", "off"), default="both")
    p.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch)
    p.add_argument("--window-ms", type=float, default=DEFAULTS.batch_window_ms)
    p.add_argument("--busy-poll-ms", type=float, default=0.0,
                   help="the verifiers' busy polling (off here: under load it only adds spinning to their CPU time)")
    p.add_argument("--distinct", type=int, default=16, help="distinct scenes (event prompts) among the devices")
    p.add_argument("--no-block-in-open", action="store_true",
                   help="devices send the first block after OPENED instead of in the OPEN")
    p.add_argument("--target-model", default="default")
    p.add_argument("--draft-model", help="the devices' model (default: the target's own folder); the devices "
                   "replay recorded drafts, so it only gives them the tokenizer and stop tokens")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=cmd_loadtest)
