"""The `edgespec` command line: one subcommand per job, each a thin wrapper."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys

from .config import DEFAULTS, resolve_model_dir, set_threads

# Modules that add their own subcommands with `register(subparsers)`.
PLUGIN_COMMANDS = (
    "edgespec.bench",
    "edgespec.demo",
    "edgespec.train_default",
    "edgespec.eval_default",
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=DEFAULTS.broker, help="mqtt://HOST:PORT (env EDGESPEC_BROKER)")
    p.add_argument("--prefix", default=DEFAULTS.prefix, help="topic prefix (env EDGESPEC_PREFIX)")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads, help="torch threads in this process")
    p.add_argument("-v", "--verbose", action="store_true")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=int, default=4, help="draft tokens per round")
    p.add_argument("--q-top", type=int, default=16, help="entries of q sent per drafted token")


def cmd_broker(args: argparse.Namespace) -> int:
    from broker.runner import MosquittoBroker

    broker = MosquittoBroker(port=args.port)
    print(f"mosquitto (development config, loopback only) on mqtt://127.0.0.1:{args.port}", flush=True)
    return broker.run_foreground()


def cmd_verifier(args: argparse.Namespace) -> int:
    from schemas import Topics
    from speculative.models import load_lm
    from verifier_node.core import VerifierConfig, VerifierCore
    from verifier_node.service import serve

    set_threads(args.threads)
    lm = load_lm(resolve_model_dir(args.target_model, "target"))
    core = VerifierCore(lm, VerifierConfig(verifier_id=args.verifier_id, max_sessions=args.max_sessions),
                        Topics(args.prefix))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready = asyncio.Event()
        task = asyncio.create_task(serve(core, args.broker, ready=ready, stop=stop))
        await ready.wait()
        print(f"verifier {args.verifier_id} ready on {args.broker}", flush=True)
        await task

    asyncio.run(main())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from camera_node.link import EdgeLink
    from camera_node.session import EdgeRequest, run_edge_session
    from schemas import Topics
    from speculative.models import load_lm
    from speculative.sampling import SamplingParams

    set_threads(args.threads)
    lm = load_lm(resolve_model_dir(args.draft_model, "draft"))
    prompt_ids = lm.encode(args.prompt)
    req = EdgeRequest(
        prompt_ids=prompt_ids,
        sampling=SamplingParams(args.temperature, args.top_k, args.top_p).validate(),
        gamma=args.gamma, max_new_tokens=args.max_new_tokens, seed=args.seed, q_top=args.q_top,
    )

    async def main():
        async with EdgeLink(args.broker, args.device_id, topics=Topics(args.prefix), timeout_s=args.timeout) as link:
            return await run_edge_session(link, lm, req)

    out = asyncio.run(main())
    r = out.result
    text = lm.decode(r.token_ids)
    if args.json:
        print(json.dumps({
            "text": text, "token_ids": r.token_ids, "rounds": r.rounds,
            "accepted_per_round": r.accepted_per_round, "acceptance_rate": r.acceptance_rate,
            "target_forwards": r.target_forwards, "wire_bytes_up": out.traffic.up,
            "wire_bytes_down": out.traffic.down, "seconds": r.seconds, "verifier_id": out.verifier_id,
            "session_id": out.session_id.hex(), "resyncs": out.resyncs,
        }))
    else:
        print(text)
        print(f"[{len(r.token_ids)} tokens in {r.rounds} rounds, acceptance {r.acceptance_rate:.2f}, "
              f"{out.traffic.up} B up / {out.traffic.down} B down, {r.seconds * 1000:.0f} ms]", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgespec", description="Edge-cloud speculative decoding over MQTT")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run Mosquitto in the foreground with the development config")
    p.add_argument("--port", type=int, default=1883)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("verifier", help="serve the target model to devices over MQTT")
    _add_common(p)
    p.add_argument("--target-model", default="default", help="model folder, or `default`")
    p.add_argument("--verifier-id", default="verifier-1")
    p.add_argument("--max-sessions", type=int, default=1024)
    p.set_defaults(func=cmd_verifier)

    p = sub.add_parser("generate", help="one edge session in text mode")
    _add_common(p)
    p.add_argument("--draft-model", default="default", help="model folder, or `default`")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device-id", default="dev-1")
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, help="seconds to wait for the verifier")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    for name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .errors import friendly_errors

    with friendly_errors():
        return int(args.func(args) or 0)
    return 2


if __name__ == "__main__":
    sys.exit(main())
