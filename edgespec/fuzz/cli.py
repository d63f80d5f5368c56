"""The `edgespec fuzz` subcommand."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from .campaign import FuzzConfig
from .contract import KNOWN_BUG_KINDS
from .report import print_report
from .run import run_mqtt


def cmd_fuzz(args: argparse.Namespace) -> int:
    cfg = FuzzConfig(
        count=args.count, devices=args.devices, seed=args.seed, target_model=args.target_model,
        draft_model=args.draft_model, broker=args.broker, verifier_id=args.verifier_id or "fuzz-verifier",
        verifier_pid=args.verifier_pid, home=args.home, broker_mode=args.broker_mode, spoof=args.spoof,
        stateless_attackers=args.attackers, session_attackers=args.session_attackers,
        max_new_tokens=args.max_new_tokens, rss_growth_mb=args.rss_growth_mb, time_limit_s=args.time_limit,
        kinds=tuple(args.kinds.split(",")) if args.kinds else None,
        exclude=tuple(args.exclude.split(",")) if args.exclude else (), threads=args.threads,
    )
    if cfg.broker and not args.verifier_id:
        raise ValueError("--broker needs --verifier-id (the verifier to fuzz)")
    report = asyncio.run(run_mqtt(cfg))
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0 if report["ok"] else 1


def register(sub) -> None:
    p = sub.add_parser("fuzz", help="hostile payloads on a verifier's uplinks while well-behaved devices generate")
    p.add_argument("--count", type=int, default=10_000, help="hostile payloads to send")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--broker", help="fuzz the verifier on this (development) broker instead of starting one")
    p.add_argument("--verifier-id", help="the verifier to fuzz (with --broker; default fuzz-verifier)")
    p.add_argument("--verifier-pid", type=int, help="its process id, to watch its memory (with --broker)")
    p.add_argument("--home", help="the fleet registry the verifier reads (default: a fresh one, or the dev home)")
    p.add_argument("--broker-mode", choices=("acl", "open"), default="acl",
                   help="the broker started here: production ACL with passwords, or the development config")
    p.add_argument("--spoof", action="store_true", help="also publish on the devices' own topics (open broker only)")
    p.add_argument("--target-model", default="default")
    p.add_argument("--draft-model", default="default")
    p.add_argument("--devices", type=int, default=3, help="well-behaved devices generating meanwhile")
    p.add_argument("--attackers", type=int, default=3, help="stateless attacker clients (one is unprovisioned)")
    p.add_argument("--session-attackers", type=int, default=2, help="attackers that hold sessions of their own")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-growth-mb", type=float, default=64.0, help="allowed growth of the verifier's RSS")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds for the whole attack")
    p.add_argument("--kinds", help="comma-separated attack kinds to run (default: all)")
    p.add_argument("--exclude", help="comma-separated attack kinds to leave out, e.g. " + ",".join(KNOWN_BUG_KINDS))
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_fuzz)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgespec")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fuzz", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
