"""`edgespec camera`: a camera node from the command line (capture, motion events, features,
a caption per event in the mode the camera picks), and how it prints what it does."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from .cli_args import (
    MODEL_HELP,
    add_common_args,
    add_max_new_tokens,
    add_metrics_args,
    add_privacy_args,
    add_sampling_args,
    privacy_from_args,
    q_rule_from_args,
    start_metrics,
)
from .config import DEFAULTS, resolve_model_dir, set_threads
from .identity import add_client_auth_args, add_device_identity_args


def format_caption(c) -> str:
    if not getattr(c, "verified", True):
        return f"[{c.device_id}] \"{c.text}\"  (unverified: the draft's own caption, {c.mode})"
    mode = "" if getattr(c, "mode", "hybrid") == "hybrid" else f"{c.mode}, "
    return (f"[{c.device_id}] \"{c.text}\"  ({mode}accept {c.acceptance_rate:.2f}, {c.rounds} rounds, "
            f"{c.bytes_up + c.bytes_down} B on the wire vs {c.jpeg_bytes_keyframes} B of JPEG key frames)")


ENDED_BY = {"still": "motion stopped", "max_duration": "longest event reached", "flush": "end of source"}


def format_event(device_id: str, event, number: int, facts=None) -> str:
    line = (f"[{device_id}] event {number}: {event.start_t:.1f}-{event.end_t:.1f} s, {event.frame_count} frames, "
            f"ended by {ENDED_BY.get(event.reason.value, event.reason.value)}")
    if facts is None:
        return line
    if not facts:
        return line + "; no moving object followed, not captioned"
    return line + "; " + ", ".join(f"{f.kind} ({f.colour}, {f.direction})" for f in facts)


def _camera_draft_dir(args: argparse.Namespace) -> Path:
    """The camera's draft folder: `--pair NAME`'s draft (NAME-draft in the models cache), else `--draft-model`."""
    if not args.pair:
        return resolve_model_dir(args.draft_model, "draft")
    from .model_registry import ModelNotFetched, pair_draft_dir

    folder = pair_draft_dir(args.pair)
    if not (folder / "config.json").is_file():
        raise ModelNotFetched(f"no draft for {args.pair} at {folder}: run `make draft` "
                              f"(`edgespec train-draft --target {args.pair}`)")
    return folder


def _camera_text_prompt(args: argparse.Namespace, lm) -> str | None:
    """The instruction the camera words its events into (the one the real models' drafts were
    distilled on), or None for the vision-feature prompt; auto (no flag): a chat model without
    a vision projector gets the instruction."""
    from .lm_prompts import EVENT_INSTRUCTION
    from .workloads import has_chat_template

    chat = has_chat_template(lm)
    wanted = chat if args.text_prompt is None else args.text_prompt
    if not wanted:
        return None
    if not chat:
        raise ValueError(f"--text-prompt needs a draft with a chat template and no vision projector: {lm.path}")
    if args.vision_encoder:
        raise ValueError("text prompts word the objects the camera measured: drop --vision-encoder "
                         "(or give --no-text-prompt)")
    return EVENT_INSTRUCTION


def cmd_camera(args: argparse.Namespace) -> int:
    from camera_node.announce import CameraAnnouncer
    from camera_node.capture import SourceError
    from camera_node.node import CameraConfig, CameraRun, run_camera
    from speculative.models import load_lm
    from speculative.sampling import SamplingParams

    from .identity import resolve_device

    # State, events and captions for home automation; Home Assistant discovery unless turned off.
    announce = CameraAnnouncer(ha_discovery=args.ha_discovery, ha_prefix=args.ha_prefix)
    set_threads(args.threads)
    ident = resolve_device(args)
    if args.draft_model == "tier" and not args.pair:  # the draft this device's tier picks
        from .tier_commands import draft_for_this_device

        folder, quantize, chosen = draft_for_this_device(args.drafts)
        lm = load_lm(folder)
        if quantize == "int8":
            from speculative.quantize import quantize_draft

            lm = quantize_draft(lm)
        print(f"[{ident.device_id}] draft by {chosen}: {folder}", flush=True)
    else:
        lm = load_lm(_camera_draft_dir(args))
    text_prompt = _camera_text_prompt(args, lm)
    extractor = None
    if args.vision_encoder:
        from camera_node.features import HFVisionFeatures

        extractor = HFVisionFeatures(args.vision_encoder)
    cfg = CameraConfig(
        device_id=ident.device_id, source=args.source, broker=ident.broker, prefix=ident.prefix, auth=ident.auth,
        keys=ident.keys, privacy=privacy_from_args(args), text_prompt=text_prompt,
        sampling=SamplingParams(args.temperature, args.top_k, args.top_p).validate(), gamma=args.gamma,
        q_rule=q_rule_from_args(args), max_new_tokens=args.max_new_tokens, seed=args.seed, max_events=args.max_events,
        realtime=args.realtime,
        timeout_s=args.timeout, draft_ahead=args.draft_ahead, busy_poll_s=args.poll_ms / 1000,
        stall_s=args.stall, mode=args.mode, gamma_ceiling=args.gamma_ceiling, local_only=args.local_only,
    )
    run = CameraRun()

    async def main() -> None:
        from .metrics import CameraCollector

        metrics = await start_metrics(args, CameraCollector(run), f"[{cfg.device_id}]")
        try:
            await run_camera(cfg, lm, extractor, on_caption=lambda c: print(format_caption(c), flush=True),
                             on_event=lambda e, n, f: print(format_event(cfg.device_id, e, n, f), flush=True),
                             run=run, announce=announce)
        finally:
            if metrics is not None:
                metrics.close()

    try:
        asyncio.run(main())
    except SourceError as exc:
        print(f"edgespec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"[{cfg.device_id}] stopped: {run.summary()}", flush=True)
        raise
    print(f"[{cfg.device_id}] {run.summary()}", flush=True)
    return 0


def add_camera(sub) -> None:
    p = sub.add_parser("camera", help="a camera node: capture, motion events, features, drafted captions")
    add_common_args(p)
    add_device_identity_args(p, device_id_default=None)
    add_client_auth_args(p)
    p.add_argument("--source", default="synthetic",
                   help="device index, /dev/videoN, video file, image folder, rtsp/http URL, or synthetic[:SEED]")
    p.add_argument("--draft-model", default="default",
                   help=MODEL_HELP + "; `tier`: the one this device's tier picks (--drafts)")
    p.add_argument("--pair", metavar="NAME", help="the draft paired with a known model (NAME-draft in the models "
                   "cache, `make draft`); overrides --draft-model")
    p.add_argument("--drafts", metavar="FILE.toml", help="with --draft-model tier: the drafts by device tier "
                   "(edgespec tier --help; default: the built-in list)")
    p.add_argument("--text-prompt", action=argparse.BooleanOptionalAction, default=None,
                   help="send the event's measured facts in words as a chat prompt, no features (default: on "
                        "for a chat-model draft without a vision projector, e.g. --pair smollm2-135m)")
    p.add_argument("--vision-encoder", help="a local Hugging Face vision encoder folder (default: OpenCV features)")
    add_max_new_tokens(p)
    p.add_argument("--max-events", type=int, help="stop after this many captions")
    p.add_argument("--realtime", action="store_true", help="pace file and synthetic sources at their frame rate")
    p.add_argument("--stall", type=float, default=5.0, metavar="S",
                   help="a source that gives no frame for S seconds ends the open event (default 5)")
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s)
    p.add_argument("--mode", choices=("auto", "hybrid", "cloud", "edge"), default="auto",
                   help="auto (default): the camera picks hybrid, cloud-only or edge-only from what it measures "
                        "(edge-only while no verifier is reachable; those captions are verified later); or always "
                        "one of them (docs/operations.md, Modes and tiers)")
    p.add_argument("--gamma-ceiling", type=int, default=8, metavar="G",
                   help="hybrid: the draft length is chosen each round up to G (default 8)")
    p.add_argument("--local-only", action="store_true",
                   help="privacy: no features or prompt leave the device; captions are the draft's alone "
                        "(published unverified, never sent for verification)")
    p.add_argument("--ha-discovery", action=argparse.BooleanOptionalAction, default=True,
                   help="announce the camera to Home Assistant (MQTT device discovery; default on)")
    p.add_argument("--ha-prefix", default="homeassistant", help="Home Assistant's discovery prefix")
    add_metrics_args(p)
    add_sampling_args(p)
    add_privacy_args(p)
    p.set_defaults(func=cmd_camera)
