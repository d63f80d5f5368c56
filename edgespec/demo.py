"""`edgespec demo`: a local Mosquitto, a verifier and three synthetic cameras, with the captions
printed as a dashboard subscribed to the result topics sees them.

`--pair NAME` (a fetched real chat model, e.g. smollm2-135m): the verifier serves that model
and the cameras its distilled draft (`make models`, `make draft`); each camera words the
facts it measured into a chat prompt (camera_node/event_prompt.py) and the real model writes
the sentence, drafted on the camera and verified exactly. The same three cameras and three
events each: most of the demo's time is the scenes played at their frame rate, and the real
target's ~100 ms forwards add about 15 s to the built-in pair's 30 on 2 cores.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from schemas.topics import PROTOCOL, Topics
from transport.lifecycle import all_exited, exit_code, interrupted, spawn, stop_children

from .config import resolve_model_dir
from .toolkit import drain

REPO = Path(__file__).resolve().parent.parent


RESULT_TOPIC = Topics(PROTOCOL).all_results()
CAMERA_EXIT_S = 30.0  # after the last caption, how long the cameras get to finish


def _spawn(args: list[str], procs: list[subprocess.Popen]) -> subprocess.Popen:
    """An `edgespec` child in its own session, recorded in `procs` before a stop signal can act."""
    return spawn([sys.executable, "-m", "edgespec.cli", *args], procs, cwd=REPO,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                 env={**os.environ, "PYTHONUNBUFFERED": "1", "EDGESPEC_THREADS": "1"})


@dataclass(frozen=True)
class DemoModels:
    """What the demo runs: model folders (or names) and whether the cameras send text prompts."""

    target: str
    draft: str
    pair: str | None = None  # a real model's name: its own draft, text prompts

    def camera_args(self) -> list[str]:
        return ["--draft-model", self.draft] + (["--text-prompt"] if self.pair else [])


def demo_models(args) -> DemoModels:
    """The demo's models, checked before anything starts; with `--pair`, one line saying
    what to run when the model or its draft is missing."""
    if not args.pair:
        resolve_model_dir(args.target_model, "target")
        resolve_model_dir(args.draft_model, "draft")
        return DemoModels(args.target_model, args.draft_model)
    from .model_registry import ModelNotFetched, pair_model_dirs

    try:
        target, draft = pair_model_dirs(args.pair)
    except ModelNotFetched as exc:
        raise ModelNotFetched(f"{exc}; run `make models` and `make draft` first") from None
    return DemoModels(str(target), str(draft), args.pair)


def intro(port: int, cameras: int, events: int, pair: str | None = None) -> str:
    """Printed once at the start: how to watch, what the fields mean, how to stop."""
    real = (f"  Real language model: the verifier serves {pair}, each camera its distilled draft; a camera\n"
            f"  words what it measured (\"facts\") into a chat prompt and the model writes the sentence.\n"
            if pair else "")
    return (
        f"edgespec demo: one verifier and {cameras} synthetic cameras, "
        f"{events} caption{'s' if events != 1 else ''} each.\n" + real +
        f"  Watch the results from another terminal (Debian: apt install mosquitto-clients):\n"
        f"    mosquitto_sub -h 127.0.0.1 -p {port} -v -t '{RESULT_TOPIC}'\n"
        f"  Each caption below comes with:\n"
        f"    acceptance                share of the camera's drafted tokens the verifier kept (1.00: all)\n"
        f"    tokens/round              caption tokens per round trip to the verifier (kept drafts + its own)\n"
        f"    +S s                      when it arrived: seconds since the cameras started\n"
        f"    KiB sent                  what the camera sent for it: token ids, draft probabilities, features\n"
        f"    JPEG key frames would be  what sending the event's key frames as JPEG images would cost instead\n"
        f"  Stop: Ctrl-C (or SIGTERM); the broker, verifier and cameras stop with the demo.\n")


@dataclass
class Tally:
    """The captions seen so far, for the closing summary."""

    expected: int
    cameras: int
    results: list = field(default_factory=list)
    facts: bool = False  # print what each camera measured with its caption (text prompts)
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        rs = self.results
        text = f"{len(rs)} of {self.expected} captions, {self.cameras} cameras"
        if rs:
            devices = len({r.device_id for r in rs})
            up = sum(r.bytes_up for r in rs) / 1024
            jpeg = sum(r.extra.get("jpeg_bytes_keyframes", 0) for r in rs) / 1024
            text += f" ({devices} captioned)"
            drafted = [r for r in rs if r.extra.get("mode", "hybrid") == "hybrid"]
            if drafted:  # acceptance is a hybrid caption's figure (cloud-only drafts nothing)
                acc = sum(r.acceptance_rate for r in drafted) / len(drafted)
                per_round = sum(r.mean_accepted + 1 for r in drafted) / len(drafted)
                text += f", acceptance {acc:.2f}, {per_round:.2f} tokens/round"
            others = len(rs) - len(drafted)
            if others:
                text += f" ({len(drafted)} hybrid, {others} in other modes)"
            text += f", {up:.1f} KiB sent vs {jpeg:.1f} KiB of JPEG key frames"
        return text + f", {time.monotonic() - self.started:.0f} s"


def result_lines(r, elapsed_s: float, facts: bool = False) -> str:
    """A caption as the demo prints it; `facts`: also what the camera measured (its prompt)."""
    up_kb = r.bytes_up / 1024
    jpeg_kb = r.extra.get("jpeg_bytes_keyframes", 0) / 1024
    lines = f"{time.strftime('%H:%M:%S')}  {r.device_id:<6} \"{r.text}\"\n"
    if facts and r.extra.get("objects"):
        from camera_node.captions import caption_for_facts

        lines += f"          facts: {caption_for_facts(r.extra['objects'])}\n"
    mode = r.extra.get("mode", "hybrid")
    sent = f"+{elapsed_s:.1f} s, {up_kb:.2f} KiB sent (JPEG key frames would be {jpeg_kb:.1f} KiB)"
    if mode == "cloud_only":  # the camera's mode policy chose the verifier's target alone
        return lines + f"          cloud-only: the target wrote {len(r.token_ids)} tokens and streamed them, {sent}"
    if r.extra.get("verified") is False:
        return lines + f"          unverified: the camera's draft alone ({mode}), {len(r.token_ids)} tokens, {sent}"
    return lines + (f"          acceptance {r.acceptance_rate:.2f}, {r.mean_accepted + 1:.2f} tokens/round, "
                    f"{len(r.token_ids)} tokens in {r.rounds} rounds, {sent}")


async def _print_results(client, tally: Tally, expected: int) -> None:
    """Print each result as it arrives, until `expected` arrived."""
    from schemas import ResultMsg, WireError

    async for message in client.messages:
        try:
            r = ResultMsg.from_json(message.payload)
        except WireError as err:
            print(f"dashboard: skipped a bad result: {err}")
            continue
        tally.results.append(r)
        print(result_lines(r, time.monotonic() - tally.started, tally.facts), flush=True)
        if len(tally.results) >= expected:
            break


async def dashboard(url: str, prefix: str, expected: int, timeout_s: float, tally: Tally | None = None,
                    cameras: list[subprocess.Popen] | None = None) -> int:
    """Print every result as it arrives (into `tally`) until `expected` arrived, the time is up or
    every camera process has exited; returns how many arrived."""
    from schemas import Topics
    from transport.client import make_client

    tally = tally if tally is not None else Tally(expected, 0)
    async with make_client(url, client_id="edgespec-demo-dashboard") as client:
        await client.subscribe(Topics(prefix).all_results(), qos=1)
        try:
            async with asyncio.timeout(timeout_s) as scope:
                def cameras_gone(task: asyncio.Task) -> None:  # a last result may be on its way: 2 s more
                    if not task.cancelled() and not scope.expired():
                        deadline, soon = scope.when(), asyncio.get_running_loop().time() + 2.0
                        scope.reschedule(soon if deadline is None else min(deadline, soon))

                watcher = asyncio.create_task(all_exited(cameras)) if cameras else None
                if watcher is not None:
                    watcher.add_done_callback(cameras_gone)
                try:
                    await _print_results(client, tally, expected)
                finally:
                    if watcher is not None:
                        watcher.cancel()
        except TimeoutError:
            if cameras and all(p.poll() is not None for p in cameras):
                print(f"dashboard: every camera has exited, {len(tally.results)}/{expected} captions")
            else:
                print(f"dashboard: timed out after {timeout_s:.0f} s with {len(tally.results)}/{expected} captions")
    return len(tally.results)


def _dashboard(broker, port: int | None):
    """The live page (`edgespec dashboard`) on `port` (0: a free one), or None: then say how."""
    if port is None:
        print(f"dashboard: `edgespec dashboard --broker-ws {broker.ws_url}` in another terminal, then open "
              "http://127.0.0.1:8080/ (or run the demo with --dashboard-port 8080)", flush=True)
        return None
    from .dashboard import DashboardServer, page_config

    server = DashboardServer(page_config(broker_ws=broker.ws_url, prefix=PROTOCOL), port=port).start()
    print(f"dashboard: open {server.url} in a browser", flush=True)
    return server


def _wait_ready(verifier: subprocess.Popen) -> bool:
    assert verifier.stdout is not None
    lines = []
    for line in verifier.stdout:  # a stop signal interrupts this read
        lines.append(line)
        if "ready on" in line:
            print(f"verifier: {line.strip()}", flush=True)
            drain(verifier)
            return True
    print("edgespec demo: the verifier did not start:\n" + "".join(lines[-20:]), file=sys.stderr)
    return False


def _wait_cameras(cams: list[subprocess.Popen], tails: list) -> list[str]:
    """Wait for the cameras to finish; the failures, one paragraph each."""
    deadline = time.monotonic() + CAMERA_EXIT_S
    failures = []
    for i, p in enumerate(cams):
        try:
            rc = p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            failures.append(f"camera cam-{i + 1} still running {CAMERA_EXIT_S:.0f} s after the last caption")
            continue
        if rc != 0:
            failures.append(f"camera cam-{i + 1} exited with {rc}:\n" + "".join(list(tails[i])[-20:]))
    return failures


def cmd_demo(args) -> int:
    """Ctrl-C or SIGTERM at any point: the children and the broker are gone within 2 s, no
    temp folder is left, and the demo prints what it saw (transport.lifecycle)."""
    from broker.runner import MosquittoBroker

    models = demo_models(args)
    expected = args.cameras * args.events
    tally = Tally(expected, args.cameras, facts=models.pair is not None)
    procs: list[subprocess.Popen] = []
    broker = MosquittoBroker(port=args.port)
    web = None
    stopping = False
    try:
        broker.start()
        print(intro(broker.port, args.cameras, args.events, models.pair), flush=True)
        print(f"broker: mosquitto (development config) on {broker.url}", flush=True)
        web = _dashboard(broker, args.dashboard_port)
        started = time.monotonic()
        verifier = _spawn(["verifier", "--broker", broker.url, "--target-model", models.target], procs)
        if not _wait_ready(verifier):
            return 1
        print(f"verifier: target {Path(models.target).name} up in {time.monotonic() - started:.1f} s", flush=True)
        tails = []
        for i in range(args.cameras):
            tails.append(drain(_spawn([
                "camera", "--broker", broker.url, "--device-id", f"cam-{i + 1}",
                "--source", f"synthetic:{args.seed + 100 * i}", *models.camera_args(),
                "--max-events", str(args.events), "--realtime", "--temperature", str(args.temperature),
                *(["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else []),
            ], procs)))  # no --seed: each camera derives its own per caption (never shared)
        tally.started = time.monotonic()
        print(f"cameras: {args.cameras} synthetic cameras, {args.events} events each\n", flush=True)
        seen = asyncio.run(dashboard(broker.url, PROTOCOL, expected, args.timeout, tally, procs[1:]))
        failures = _wait_cameras(procs[1:], tails)
        for text in failures:
            print(text, file=sys.stderr)
        print(f"\ndone: {tally.summary()}", flush=True)
        return 0 if seen == expected and not failures else 1
    except KeyboardInterrupt:
        interrupted()
        stopping = True
    finally:
        if web is not None:
            web.stop()
        stop_children(procs)
        broker.stop()
    if stopping:
        print(f"\nstopped: {tally.summary()}", flush=True)
    return exit_code()


def register(sub) -> None:
    p = sub.add_parser("demo", help="broker + verifier + three synthetic cameras, captions as they arrive")
    p.add_argument("--cameras", type=int, default=3)
    p.add_argument("--events", type=int, default=3, help="captions per camera")
    p.add_argument("--port", type=int, default=0, help="broker port (0: a free one)")
    p.add_argument("--target-model", default="default")
    p.add_argument("--draft-model", default="default")
    p.add_argument("--pair", metavar="NAME", help="a real chat model (e.g. smollm2-135m) on the verifier and its "
                   "distilled draft on the cameras, which send their events in words (`make models`, `make draft`); "
                   "overrides the two above")
    p.add_argument("--max-new-tokens", type=int, help="most tokens per caption (default: the camera's)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic scenes")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--dashboard-port", type=int, help="also serve the live web dashboard on this port (0: a free one)")
    p.set_defaults(func=cmd_demo)
