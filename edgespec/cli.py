"""The `edgespec` command line: one subcommand per job, each a thin wrapper."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
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
from . import settings_file
from .config import DEFAULTS, VERIFIER, resolve_model_dir, set_threads
from .lm_prompts import prompt_ids_for
from .identity import add_client_auth_args, add_device_identity_args
from .camera_command import add_camera

# Modules that add their own subcommands with `register(subparsers)`, with the commands each
# adds and their one-line help. Only the module of the command being run is imported, and none
# of them imports torch, transformers or cv2 before the command runs: `--help` and argument
# errors never wait for them.
PLUGIN_COMMANDS: dict[str, dict[str, str]] = {
    "edgespec.bench": {"bench": "benchmark the target alone, in-process, HF assisted and via Mosquitto"},
    "edgespec.demo": {"demo": "broker + verifier + three synthetic cameras, captions as they arrive"},
    "edgespec.batch_bench": {"bench-batch": "batched vs unbatched verification on one target, step by step"},
    "edgespec.bench_linear": {"bench-linear": "a model's forward with PyTorch's linear vs edgespec's"},
    "edgespec.bench_q": {"bench-q": "acceptance and uplink bytes of fixed vs mass-sized q"},
    "edgespec.pair_commands": {"train-default": "train the built-in target/draft model pair",
                               "eval-default": "measure the built-in model pair on held-out scenes"},
    "edgespec.provisioning": {"ca": "the project's certificate authority",
                              "broker-files": "a production Mosquitto folder",
                              "keys": "the verifier's key ring (end-to-end encryption)",
                              "flash": "provision a device: keys, credentials, bundle",
                              "revoke": "remove a device: it can no longer connect, live connections are cut"},
    "edgespec.loadtest": {"loadtest": "simulated devices against verifier processes through a local broker"},
    "edgespec.fuzz": {"fuzz": "hostile payloads on a verifier's uplinks while well-behaved devices generate"},
    "edgespec.serving": {"serving": "verifier serving with edge drafts vs the target alone (cloud-only)"},
    "edgespec.dashboard": {"dashboard": "a live web page of the fleet (captions, availability, verifiers)"},
    "edgespec.models_fetch": {"models": "real models: fetch them at set-up (never at run time), list them"},
    "edgespec.draft_commands": {"train-draft": "distil a small draft for a target language model",
                                "eval-draft": "greedy acceptance and cost per token of a draft for its target"},
    "edgespec.netem": {"netem": "a TCP proxy in front of the broker adding delay, jitter, a rate limit, cuts"},
    "edgespec.tier_commands": {"tier": "this device's tier (memory, cores, accelerator, battery), its draft",
                               "bench-quant": "an int8 draft against its fp32 original: acceptance and speed"},
}



def cmd_broker(args: argparse.Namespace) -> int:
    from broker.runner import MosquittoBroker

    def announce(url: str) -> None:
        print(f"mosquitto (development config, loopback only) on {url}; Ctrl-C stops it", flush=True)

    return MosquittoBroker(port=args.port, ws_port=args.ws_port).run_foreground(announce)


def cmd_verifier(args: argparse.Namespace) -> int:
    from schemas import Topics
    from speculative.models import load_lm
    from transport.lifecycle import note
    from transport.urls import redact_url
    from verifier_node.core import VerifierCore
    from verifier_node.service import serve_reconnecting
    from verifier_node.settings import VerifierSettings

    from .identity import client_auth_from_args, resolve_verifier_crypto, warn_password_in_url

    broker = args.broker or DEFAULTS.broker
    warn_password_in_url(broker)
    auth = client_auth_from_args(args, account=args.verifier_id)
    if args.broker_dir and args.broker is None and "EDGESPEC_BROKER" not in os.environ:
        broker = _broker_dir_url(args.broker_dir)
    set_threads(args.threads)
    lm = load_lm(resolve_model_dir(args.target_model, "target"), dtype=args.dtype, device=args.device,
                 device_map=args.device_map)
    settings = VerifierSettings(verifier_id=args.verifier_id, max_sessions=args.max_sessions,
                                max_sessions_per_device=args.max_sessions_per_device,
                                device_rate=args.device_rate, device_burst=args.device_burst,
                                max_batch=args.max_batch, batch_window_s=args.batch_window_ms / 1000,
                                busy_poll_s=args.busy_poll_ms / 1000)
    core = VerifierCore(lm, settings, Topics(args.prefix or DEFAULTS.prefix), resolve_verifier_crypto(args))
    core.time_decode()  # what a cloud-only token costs here, told to devices in verdicts

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            note(sig)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        ready = asyncio.Event()

        async def announce() -> None:
            await ready.wait()
            mode = "plaintext allowed" if args.allow_plaintext else "encrypted sessions only"
            print(f"verifier {args.verifier_id} ready on {redact_url(broker)} ({mode})", flush=True)

        from .metrics import VerifierCollector

        metrics = await start_metrics(args, VerifierCollector(core), f"verifier {args.verifier_id}")
        announcer = asyncio.create_task(announce())
        try:
            await serve_reconnecting(core, broker, auth=auth, ready=ready, stop=stop)
        finally:
            announcer.cancel()
            if metrics is not None:
                metrics.close()

    asyncio.run(main())
    return 0


def _broker_dir_url(broker_dir: str) -> str:
    """mqtt://127.0.0.1:<loopback port> of a broker folder (a verifier on the broker's host)."""
    doc = json.loads((Path(broker_dir) / "broker.json").read_text(encoding="utf-8"))
    return f"mqtt://127.0.0.1:{int(doc.get('loopback_port', 1883))}"


def cmd_generate(args: argparse.Namespace) -> int:
    from camera_node.link import EdgeLink
    from camera_node.session import EdgeRequest, result_message, run_edge_session
    from schemas import Topics
    from speculative.models import load_lm
    from speculative.sampling import SamplingParams

    from .identity import resolve_device

    set_threads(args.threads)
    ident = resolve_device(args)
    lm = load_lm(resolve_model_dir(args.draft_model, "draft"))
    prompt_sent = privacy_from_args(args).prompt(args.prompt)
    prompt_ids = prompt_ids_for(lm, prompt_sent, raw=args.raw_prompt)
    req = EdgeRequest(
        prompt_ids=prompt_ids,
        sampling=SamplingParams(args.temperature, args.top_k, args.top_p).validate(),
        gamma=args.gamma, max_new_tokens=args.max_new_tokens,
        seed=args.seed if args.seed is not None else int.from_bytes(os.urandom(8), "little"),
        q_rule=q_rule_from_args(args),
        draft_ahead=args.draft_ahead, busy_poll_s=args.poll_ms / 1000,
    )

    async def main():
        async with EdgeLink(ident.broker, ident.device_id, topics=Topics(ident.prefix), auth=ident.auth,
                            timeout_s=args.timeout, keys=ident.keys) as link:
            outcome = await run_edge_session(link, lm, req)
            await link.publish_result(result_message(ident.device_id, outcome, lm.decode(outcome.result.token_ids)))
            return outcome

    # The session's warnings are held until it ends (unless --verbose). A session that fails
    # ends with one line that tells its re-opens (camera_node/machine.py), so their own
    # warnings are dropped then; any other warning, and all of them after a session that
    # completed, are printed when it ends.
    import logging

    camera_log = logging.getLogger("edgespec.camera")
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or args.verbose:
            return True
        held.append(record)
        return False

    def reopen_note(record: logging.LogRecord) -> bool:
        return any(words in str(record.msg) for words in ("re-opening the session", "sending the open again"))

    camera_log.addFilter(hold)
    try:
        out = asyncio.run(main())
    except BaseException:
        held[:] = [record for record in held if not reopen_note(record)]
        raise
    finally:
        camera_log.removeFilter(hold)
        for record in held:
            camera_log.handle(record)
    r = out.result
    text = lm.decode(r.token_ids)
    if args.json:
        print(json.dumps({
            "text": text, "token_ids": r.token_ids, "rounds": r.rounds,
            "accepted_per_round": r.accepted_per_round, "acceptance_rate": r.acceptance_rate,
            "target_forwards": r.target_forwards, "wire_bytes_up": out.traffic.up,
            "wire_bytes_down": out.traffic.down, "seconds": r.seconds, "verifier_id": out.verifier_id,
            "session_id": out.session_id.hex(), "resyncs": out.resyncs, "prompt_sent": prompt_sent,
        }))
    else:
        print(text)
        print(f"[{len(r.token_ids)} tokens in {r.rounds} rounds, acceptance {r.acceptance_rate:.2f}, "
              f"{out.traffic.up} B up / {out.traffic.down} B down, {r.seconds * 1000:.0f} ms]", file=sys.stderr)
    return 0


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on a command line (its first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `edgespec` parser. With `argv`, only the plugin module of the command it names is
    imported; the other plugin commands are listed (for --help) from PLUGIN_COMMANDS without
    importing their modules. Without `argv`, every plugin module is imported."""
    parser = argparse.ArgumentParser(prog="edgespec", description="Edge-cloud speculative decoding over MQTT")
    parser.add_argument("--settings", metavar="FILE",
                        help="TOML file of flag defaults, per command (env: EDGESPEC_SETTINGS; "
                             "flags and EDGESPEC_* variables win over it)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_broker, _add_verifier, _add_generate, add_camera):
        add(sub)
    _add_plugins(sub, argv)
    return parser


def _add_broker(sub) -> None:
    p = sub.add_parser("broker", help="run Mosquitto in the foreground with the development config")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--ws-port", type=int, default=9001, help="MQTT over websockets, for `edgespec dashboard`")
    p.set_defaults(func=cmd_broker)


def _add_verifier(sub) -> None:
    p = sub.add_parser("verifier", help="serve the target model to devices over MQTT")
    add_common_args(p)
    p.add_argument("--target-model", default="default", help=MODEL_HELP)
    p.add_argument("--verifier-id", default=VERIFIER.verifier_id)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--device-map", help="`auto`: spread a target larger than one accelerator (needs accelerate)")
    p.add_argument("--max-sessions", type=int, default=VERIFIER.max_sessions)
    p.add_argument("--max-sessions-per-device", type=int, default=VERIFIER.max_sessions_per_device,
                   help="a device opening more gives up its own oldest session, never another device's")
    p.add_argument("--device-rate", type=float, default=VERIFIER.device_rate,
                   help="uplink messages per second per device; more are dropped and counted as busy")
    p.add_argument("--device-burst", type=int, default=VERIFIER.device_burst)
    p.add_argument("--home", metavar="DIR", help="fleet registry and verifier keys (default: the development home)")
    p.add_argument("--allow-plaintext", action="store_true", help="also accept unencrypted sessions")
    add_client_auth_args(p, broker_dir=True)
    p.add_argument("--batch-window-ms", type=float, default=DEFAULTS.batch_window_ms,
                   help="while several sessions are held, wait this long for more drafts before a batched forward")
    p.add_argument("--max-batch", type=int, default=DEFAULTS.max_batch,
                   help="most blocks per batched forward (1: batching off)")
    add_metrics_args(p)
    p.add_argument("--busy-poll-ms", type=float, default=DEFAULTS.busy_poll_ms,
                   help="after each reply keep polling the socket this long instead of sleeping, so the next "
                        "round's forward runs on a warm CPU (0: off; see docs/benchmarks.md)")
    p.set_defaults(func=cmd_verifier)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="one edge session in text mode")
    add_common_args(p)
    p.add_argument("--draft-model", default="default", help=MODEL_HELP)
    p.add_argument("--prompt", required=True)
    p.add_argument("--raw-prompt", action="store_true",
                   help="send the prompt as it is, not as a user turn of the model's chat template")
    add_max_new_tokens(p)
    add_device_identity_args(p, device_id_default="dev-1")
    add_client_auth_args(p)
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout_s, help="seconds to wait for the verifier")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_sampling_args(p)
    add_privacy_args(p)
    p.set_defaults(func=cmd_generate)


def _add_plugins(sub, argv: list[str] | None) -> None:
    """Each PLUGIN_COMMANDS module's commands: registered by the module itself when it is
    imported (every module without `argv`, else only the one of the command named), otherwise
    listed with their help only."""
    wanted = None if argv is None else _command_of(argv)
    for name, commands in PLUGIN_COMMANDS.items():
        if argv is not None and wanted not in commands:
            for command, text in commands.items():  # listed only; never run from here
                sub.add_parser(command, help=text)
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)


def main(argv: list[str] | None = None) -> int:
    from transport.lifecycle import die_with_parent, finish, sigterm_as_interrupt

    sigterm_as_interrupt()  # SIGTERM stops every command the way Ctrl-C does (children, temp folders)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        settings, argv = settings_file.settings_path(argv)
    except settings_file.SettingsFileError:
        settings, argv = None, ["--settings"]  # argparse then says what is missing
    parser = build_parser(argv)
    try:
        if settings:
            settings_file.apply(parser, _command_of(argv), settings_file.load(settings), settings)
    except settings_file.SettingsFileError as exc:
        parser.error(str(exc))
    args = parser.parse_args(argv)
    from .logs import configure_logging

    configure_logging(verbose=getattr(args, "verbose", False), json_lines=getattr(args, "log_json", False))
    from .errors import friendly_errors

    try:
        with friendly_errors():
            die_with_parent()
            return finish(int(args.func(args) or 0))
    except SystemExit as exc:  # after a stop signal: leave at once (lifecycle.finish)
        finish(exc.code if isinstance(exc.code, int) else 1)
        raise
    return 2


if __name__ == "__main__":
    sys.exit(main())
