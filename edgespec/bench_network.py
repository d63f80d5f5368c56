"""`edgespec bench --rtt 0,10,25,50,100`: every way of captioning, over an emulated network.

The device talks to Mosquitto through the project's own network emulator
(`transport.netem.NetemProxy`, half the round trip added in each direction); the verifier
process connects to the broker directly, as a cloud verifier beside its broker would. Per
round-trip time, one run over the same prompts:

* ``edge-only``: the draft model alone on the device (no network; its text is unverified);
* ``cloud-only``: the verifier generates with the target and streams each token back;
* ``hybrid g1 / g2 / g4 / g8``: speculative decoding with a fixed draft length;
* ``adaptive``: the draft length chosen before each round from measurements
  (`speculative.gamma_control.GammaController`, ceiling 8);
* ``adaptive+pipe``: the same while the next block is drafted during the wait.

Each row gives tokens per second, seconds to a full caption, whether every verified output
equals the target's own greedy output, and the verifier's CPU seconds per caption (its
process's user + system time), from which the verifier capacity of hybrid against
cloud-only follows: devices one verifier serves is inversely proportional to it.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import resolve_model_dir, set_threads
from .loadtest import cpu_seconds
from .model_registry import pair_model_dirs
from .toolkit import spawn
from .workloads import chat_cases, has_chat_template, references, vision_cases

VERIFIER_ID = "bench-rtt-verifier"
DEVICE = "bench-rtt-dev"
FIXED_GAMMAS = (1, 2, 4, 8)
CEILING = 8  # the adaptive modes' negotiated gamma
TICKS_BETWEEN_CAPTIONS = 2  # mode decisions between two captions (a camera decides twice a second)
MODES = ("edge-only", "cloud-only", *(f"hybrid g{g}" for g in FIXED_GAMMAS), "adaptive", "adaptive+pipe")
HYBRID = tuple(m for m in MODES if m not in ("edge-only", "cloud-only"))


class RttError(ValueError):
    """A bad --rtt list (reported in one line)."""


class ProxyThread:
    """A `NetemProxy` on an event loop of its own thread: the device's forwards, which hold
    the bench's loop, never delay the bytes it forwards."""

    def __init__(self, host: str, port: int):
        from transport.netem import NetemProxy

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="netem", daemon=True)
        self.thread.start()
        self.proxy = NetemProxy(host, port)
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop).result(10)

    @property
    def url(self) -> str:
        host, port = self.proxy.address
        return f"mqtt://{host}:{port}"

    def set_rtt(self, rtt_ms: float) -> None:
        async def apply() -> None:
            self.proxy.set(delay_ms=rtt_ms / 2)
        asyncio.run_coroutine_threadsafe(apply(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Row:
    """One mode at one round-trip time."""

    mode: str
    rtt_ms: float
    tokens: int = 0
    seconds: float = 0.0
    captions: int = 0
    exact: int = 0  # outputs equal to the target's greedy output
    verifier_cpu_s: float = 0.0
    rounds: int = 0
    gammas: list[int] = field(default_factory=list)
    measured: dict = field(default_factory=dict)  # the adaptive controller's timings after the run
    made_in: dict = field(default_factory=dict)  # captions per mode they were made in

    def summary(self) -> dict:
        return {"mode": self.mode, "rtt_ms": self.rtt_ms, "tokens": self.tokens, "captions": self.captions,
                "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
                "caption_s": self.seconds / self.captions if self.captions else 0.0,
                "exact": self.exact, "verified": self.mode != "edge-only",
                "rounds": self.rounds, "mean_gamma": sum(self.gammas) / len(self.gammas) if self.gammas else None,
                "verifier_cpu_ms_per_caption": 1e3 * self.verifier_cpu_s / self.captions if self.captions else 0.0,
                "made_in": self.made_in, **({"measured": self.measured} if self.measured else {})}


async def _one(mode: str, link, draft, case, n: int, adaptive: dict):
    """One caption in `mode`: (token ids, seconds, rounds, gamma used last, mode it was made in)."""
    from camera_node.session import EdgeRequest, run_cloud_session, run_edge_session
    from speculative.draft import Drafter
    from speculative.loop import StopRule
    from speculative.offline import generate_edge_only
    from speculative.sampling import SamplingParams

    started = time.perf_counter()
    if mode == "edge-only":
        rec = generate_edge_only(Drafter(draft, SamplingParams()), case.prompt_ids, case.features,
                                 StopRule(n, draft.eos_token_ids))
        return rec.tokens, time.perf_counter() - started, 0, None, mode
    req = EdgeRequest(case.prompt_ids, case.features, max_new_tokens=n, draft_ahead=mode == "adaptive+pipe")
    if mode == "cloud-only":
        out = await run_cloud_session(link, draft, req)
        return out.result.token_ids, out.result.seconds, out.result.rounds, None, mode
    modes = adaptive.get(mode)
    if modes is not None:  # the camera's own choice of mode and gamma (camera_node.modes)
        for _ in range(TICKS_BETWEEN_CAPTIONS):
            modes.decide(link)
        made = await modes.caption(link, draft, req)
        rounds = made.outcome.result.rounds if made.outcome is not None else 0
        return made.token_ids, made.seconds, rounds, modes.controller.gamma, made.mode.value
    out = await run_edge_session(link, draft, replace(req, gamma=int(mode.split("g")[-1]), draft_ahead=False))
    return out.result.token_ids, out.result.seconds, out.result.rounds, None, "hybrid"


async def run_rtt(url: str, proxy: ProxyThread, verifier_pid: int, draft, cases, refs, rtt_ms: float,
                  n: int, reps: int, keys=None) -> list[Row]:
    """Every mode at one round-trip time, interleaved case by case, through `proxy`."""
    from camera_node.link import EdgeLink
    from camera_node.modes import CameraModes

    proxy.set_rtt(rtt_ms)
    rows = {m: Row(m, rtt_ms) for m in MODES}
    adaptive = {"adaptive": CameraModes(ceiling=CEILING, pipelined=False),
                "adaptive+pipe": CameraModes(ceiling=CEILING, pipelined=True)}
    async with EdgeLink(url, DEVICE, keys=keys) as link:
        for mode in MODES:  # warm: connections, caches, and the controllers' first measurements
            await _one(mode, link, draft, cases[0], n, adaptive)
        for _ in range(reps):
            for case, ref in zip(cases, refs, strict=True):
                for mode in MODES:
                    cpu = cpu_seconds(verifier_pid)
                    tokens, seconds, rounds, gamma, made_in = await _one(mode, link, draft, case, n, adaptive)
                    row = rows[mode]
                    row.verifier_cpu_s += cpu_seconds(verifier_pid) - cpu
                    row.tokens += len(tokens)
                    row.seconds += seconds
                    row.captions += 1
                    row.rounds += rounds
                    row.exact += int([t for t in tokens if t not in draft.eos_token_ids] ==
                                     [t for t in ref if t not in draft.eos_token_ids])
                    row.made_in[made_in] = row.made_in.get(made_in, 0) + 1
                    if gamma is not None and made_in == "hybrid":
                        row.gammas.append(gamma)
    for mode, modes in adaptive.items():
        ctrl = modes.controller
        t = ctrl.timing()
        g = ctrl.gamma
        every = all_accepted(ctrl, g)
        rows[mode].measured = {
            "rtt_ms": t.rtt_s * 1e3, "draft_ms_per_token": t.draft_s * 1e3, "verify_ms": t.verify_s(g) * 1e3,
            "acceptance": ctrl.acceptance.value, "gamma": g,
            # What pipelining can gain at most here: a round's drafting hidden behind the wait,
            # in the rounds whose every draft is accepted (otherwise what was drafted ahead is
            # dropped), as the controller measured them.
            "all_accepted": every, "pipelining_bound": pipelining_bound(t, g, every)}
    return list(rows.values())


def all_accepted(ctrl, g: int) -> float:
    """The share of rounds of g drafts that accept every one, from the acceptance per position."""
    return math.prod(ctrl.acceptance.profile(max(1, g)))


def pipelining_bound(t, g: int, all_accepted_share: float) -> float | None:
    """Round time over round time less the drafting that drafting ahead can hide (at most the
    wait, and only in the rounds that accept every draft)."""
    plain, drafting = t.round_s(g), g * t.draft_s
    hidden = all_accepted_share * min(drafting, plain - drafting)
    return plain / (plain - hidden) if plain - hidden > 0 else None


def summarise(rows: list[dict], rtts: list[float]) -> dict:
    """Per RTT: the best fixed choice, adaptive against it, pipelining's gain; capacity."""
    by = {(r["rtt_ms"], r["mode"]): r for r in rows}
    out: dict = {"per_rtt": []}
    for rtt in rtts:
        fixed = [m for m in ("cloud-only", *(f"hybrid g{g}" for g in FIXED_GAMMAS))]
        best = max(fixed, key=lambda m: by[(rtt, m)]["tokens_per_s"])
        best_tps = by[(rtt, best)]["tokens_per_s"]
        adaptive = by[(rtt, "adaptive")]["tokens_per_s"]
        pipe = by[(rtt, "adaptive+pipe")]["tokens_per_s"]
        measured = by[(rtt, "adaptive")].get("measured", {})
        out["per_rtt"].append({"rtt_ms": rtt, "best_fixed": best, "best_fixed_tokens_per_s": best_tps,
                               "adaptive_over_best_fixed": adaptive / best_tps if best_tps else None,
                               "pipelining_gain": pipe / adaptive if adaptive else None,
                               "pipelining_bound": measured.get("pipelining_bound"),
                               "all_accepted": measured.get("all_accepted"),
                               "draft_ms_per_token": measured.get("draft_ms_per_token"),
                               "verify_ms": measured.get("verify_ms")})
    for rtt in rtts:  # verifier CPU per caption: cloud-only against the cheapest hybrid setting
        cloud = by[(rtt, "cloud-only")]["verifier_cpu_ms_per_caption"]
        hybrid = min(by[(rtt, f"hybrid g{g}")]["verifier_cpu_ms_per_caption"] for g in FIXED_GAMMAS)
        out.setdefault("capacity_hybrid_over_cloud", {})[str(rtt)] = cloud / hybrid if hybrid else None
    return out


def print_table(result: dict) -> None:
    print(f"pair: {result['config']['pair']}   prompts {result['config']['prompts']} x reps "
          f"{result['config']['reps']}   max tokens {result['config']['max_new_tokens']}")
    head = (f"{'rtt ms':>7}  {'mode':<14}{'tok/s':>8}{'caption s':>11}{'exact':>8}{'gamma':>7}{'verifier ms/cap':>17}"
            f"  made in")
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        if r["mode"].startswith("hybrid g"):
            gamma = r["mode"].split("g")[-1]
        else:
            gamma = "" if r["mean_gamma"] is None else f"{r['mean_gamma']:.1f}"
        exact = "-" if not r["verified"] else f"{r['exact']}/{r['captions']}"
        made_in = " ".join(f"{m} {k}" for m, k in r["made_in"].items()) if r["mode"].startswith("adaptive") else ""
        print(f"{r['rtt_ms']:>7g}  {r['mode']:<14}{r['tokens_per_s']:>8.1f}{r['caption_s']:>11.3f}{exact:>8}"
              f"{gamma:>7}{r['verifier_cpu_ms_per_caption']:>17.1f}  {made_in}")
    print()
    for s in result["summary"]["per_rtt"]:
        bound = "" if s["pipelining_bound"] is None else \
            (f" (at most {s['pipelining_bound']:.2f}x: drafting {s['draft_ms_per_token']:.2f} ms/token, "
             f"verifier {s['verify_ms']:.1f} ms a block, {s['all_accepted']:.0%} of rounds accept every draft)")
        print(f"rtt {s['rtt_ms']:>5g} ms: best fixed {s['best_fixed']:<11} {s['best_fixed_tokens_per_s']:7.1f} tok/s;"
              f" adaptive {s['adaptive_over_best_fixed']:.2f}x of it; pipelining {s['pipelining_gain']:.2f}x adaptive"
              f"{bound}")
    for rtt, ratio in result["summary"]["capacity_hybrid_over_cloud"].items():
        print(f"verifier capacity at {rtt} ms, hybrid / cloud-only: {ratio:.2f}x "
              f"(verifier CPU per caption, the cheapest fixed gamma)")


def parse_rtts(text: str) -> list[float]:
    """`0,10,25` as milliseconds; a RttError (one line) for anything else."""
    try:
        rtts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RttError(f"--rtt {text!r}: give round-trip times in ms separated by commas, e.g. 0,10,25") from None
    if not rtts or any(not 0 <= r <= 10_000 for r in rtts):
        raise RttError(f"--rtt {text!r}: each round-trip time must be between 0 and 10000 ms")
    return rtts


def run(args) -> dict:
    from broker.runner import MosquittoBroker
    from speculative.models import load_lm

    from security.channel import DeviceKeys
    from security.dev_identity import ensure_dev_identity

    set_threads(args.threads)
    rtts = parse_rtts(args.rtt)
    pair = args.pair or "default"
    target_dir, draft_dir = pair_model_dirs(pair) if args.pair else \
        (resolve_model_dir(args.target_model, "target"), resolve_model_dir(args.draft_model, "draft"))
    keys = DeviceKeys.from_bundle(ensure_dev_identity(None, DEVICE)[0])
    target, draft = load_lm(target_dir), load_lm(draft_dir)
    cases = chat_cases(target, "event", args.prompts) if has_chat_template(target) else \
        vision_cases(target, args.prompts)
    refs = references(target, cases, args.max_new_tokens)
    rows: list[dict] = []
    with MosquittoBroker(port=0) as broker:
        verifier = spawn(["-m", "edgespec.cli", "verifier", "--broker", broker.url, "--target-model",
                          str(target_dir), "--verifier-id", VERIFIER_ID], "ready on")
        proxy = ProxyThread("127.0.0.1", broker.port)
        try:
            for rtt in rtts:
                print(f"rtt {rtt:g} ms ...", flush=True)
                found = asyncio.run(run_rtt(proxy.url, proxy, verifier.pid, draft, cases, refs, rtt,
                                            args.max_new_tokens, args.reps, keys))
                rows += [r.summary() for r in found]
        finally:
            proxy.close()
            verifier.terminate()
            verifier.wait(timeout=10)
    result = {"config": {"pair": pair, "target": str(target_dir), "draft": str(draft_dir), "rtt_ms": rtts,
                         "prompts": len(cases), "reps": args.reps, "max_new_tokens": args.max_new_tokens,
                         "threads": args.threads, "ceiling_gamma": CEILING},
              "rows": rows, "summary": summarise(rows, rtts)}
    print_table(result)
    return result


def cmd_rtt(args) -> int:
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from .plot_png import line_chart

        verified = [m for m in MODES if m != "edge-only"]  # the draft alone is off the scale, and unverified
        series = {m: [(r["rtt_ms"], r["tokens_per_s"]) for r in result["rows"] if r["mode"] == m] for m in verified}
        line_chart(series, args.plot, title=f"verified tokens/s by round-trip time ({result['config']['pair']} pair)",
                   xlabel="round-trip time, ms", ylabel="tokens/s")
        print(f"wrote {args.plot}")
    return 0
