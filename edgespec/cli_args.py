"""Flags that several `edgespec` commands share, and what the commands make of them."""

from __future__ import annotations

import argparse

from .config import DEFAULTS

MODEL_HELP = "model folder, `default`, or a fetched model's name (edgespec models list)"


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help=f"mqtt://HOST:PORT (env EDGESPEC_BROKER, default {DEFAULTS.broker})")
    p.add_argument("--prefix", help=f"topic prefix (env EDGESPEC_PREFIX, default {DEFAULTS.prefix})")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads, help="torch threads in this process")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--log-json", action="store_true",
                   help="log one JSON object per line (time, level, logger, message) instead of text")


def add_metrics_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, metavar="P",
                   help="serve Prometheus metrics on http://HOST:P/metrics (default: off)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics endpoint listens on")


async def start_metrics(args: argparse.Namespace, collector, who: str):
    """The metrics endpoint when --metrics-port is given (else None), announced on stdout."""
    if args.metrics_port is None:
        return None
    from .metrics import metrics_url, registry_for, serve_metrics

    server = await serve_metrics(registry_for(collector), args.metrics_port, args.metrics_host)
    print(f"{who}: metrics on {metrics_url(server)}", flush=True)
    return server


def add_max_new_tokens(p: argparse.ArgumentParser, flag: str = "--max-new-tokens") -> None:
    p.add_argument(flag, type=int, default=DEFAULTS.max_new_tokens,
                   help="most tokens generated per session (default %(default)s)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed, for reproducible runs (a camera's n-th caption uses SEED + n); default: "
                        "a fresh seed per session (a camera derives it from its device id, the event and a "
                        "per-start nonce)")
    p.add_argument("--gamma", type=int, default=DEFAULTS.gamma, help="draft tokens per round")
    add_q_args(p)
    p.add_argument("--draft-ahead", action=argparse.BooleanOptionalAction, default=True,
                   help="draft the next block while the current one is verified (pipelining; default on)")
    p.add_argument("--poll-ms", type=float, default=DEFAULTS.poll_ms,
                   help="after sending a block, poll the socket this long before sleeping (0: sleep at once, "
                        "for battery-powered devices)")


def add_q_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--q-mass", type=float, default=DEFAULTS.q_mass,
                   help="send per drafted token the smallest part of q holding this share of its mass "
                        "(default %(default)s)")
    p.add_argument("--q-max", type=int, default=DEFAULTS.q_max,
                   help="at most this many entries of q per drafted token (default %(default)s)")
    p.add_argument("--q-top", type=int, default=DEFAULTS.q_top, metavar="N",
                   help="cut q at a fixed N entries instead (default: sized by --q-mass)")


def q_rule_from_args(args: argparse.Namespace):
    """The QRule of --q-mass, --q-max and --q-top (a ValueError names a bad value)."""
    from speculative.sampling import QRule

    return QRule(args.q_mass, args.q_max, args.q_top).validate()


def add_privacy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sanitize-prompt", action="store_true", help="replace e-mails, phones and --private-names")
    p.add_argument("--private-names", metavar="A,B|@FILE", help="names the sanitiser replaces")
    p.add_argument("--feature-dp", metavar="EPS[,DELTA]", help="add Gaussian noise: (eps, delta)-DP features")
    p.add_argument("--feature-clip", type=float, default=4.0, help="L2 clip of the features before noise")


def privacy_from_args(args: argparse.Namespace):
    from camera_node.privacy import PrivacyConfig, parse_names

    eps, delta = None, 1e-5
    if getattr(args, "feature_dp", None):
        parts = args.feature_dp.split(",")
        eps = float(parts[0])
        delta = float(parts[1]) if len(parts) > 1 else delta
    return PrivacyConfig(args.sanitize_prompt, parse_names(args.private_names), eps, delta,
                         getattr(args, "feature_clip", 4.0))
