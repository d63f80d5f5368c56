"""`edgespec demo`: a local Mosquitto, a verifier and three synthetic cameras, with the captions
printed as a dashboard subscribed to the result topics sees them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from .bench import drain
from .config import resolve_model_dir

REPO = Path(__file__).resolve().parent.parent


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgespec.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "EDGESPEC_THREADS": "1"})


async def dashboard(url: str, prefix: str, expected: int, timeout_s: float) -> int:
    """Print every result as it arrives; returns how many arrived."""
    from edgespec.mqtt import make_client
    from schemas import ResultMsg, Topics, WireError

    seen = 0
    async with make_client(url, client_id="edgespec-demo-dashboard") as client:
        await client.subscribe(Topics(prefix).all_results(), qos=1)
        print(f"dashboard: subscribed to {Topics(prefix).all_results()}", flush=True)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    try:
                        r = ResultMsg.from_json(message.payload)
                    except WireError as err:
                        print(f"dashboard: skipped a bad result: {err}")
                        continue
                    seen += 1
                    up_kb = r.bytes_up / 1024
                    jpeg_kb = r.extra.get("jpeg_bytes_keyframes", 0) / 1024
                    print(f"{time.strftime('%H:%M:%S')}  {r.device_id:<6} \"{r.text}\"\n"
                          f"          acceptance {r.acceptance_rate:.2f}, {r.mean_accepted + 1:.2f} tokens/round, "
                          f"{up_kb:.2f} KiB sent (JPEG key frames would be {jpeg_kb:.1f} KiB)", flush=True)
                    if seen >= expected:
                        break
        except TimeoutError:
            print(f"dashboard: timed out after {timeout_s:.0f} s with {seen}/{expected} captions")
    return seen


def _dashboard(broker, port: int | None):
    """The live page (`edgespec dashboard`) on `port` (0: a free one), or None: then say how."""
    if port is None:
        print(f"dashboard: `edgespec dashboard --broker-ws {broker.ws_url}` in another terminal, then open "
              "http://127.0.0.1:8080/ (or run the demo with --dashboard-port 8080)", flush=True)
        return None
    from .dashboard import DashboardServer, page_config

    server = DashboardServer(page_config(broker_ws=broker.ws_url, prefix="edgespec/v1"), port=port).start()
    print(f"dashboard: open {server.url} in a browser", flush=True)
    return server


def cmd_demo(args) -> int:
    from broker.runner import MosquittoBroker

    resolve_model_dir(args.target_model, "target")
    resolve_model_dir(args.draft_model, "draft")
    procs: list[subprocess.Popen] = []
    with MosquittoBroker(port=args.port) as broker:
        print(f"broker: mosquitto (development config) on {broker.url}", flush=True)
        web = None
        try:
            web = _dashboard(broker, args.dashboard_port)
            verifier = _spawn(["verifier", "--broker", broker.url, "--target-model", args.target_model])
            procs.append(verifier)
            for line in verifier.stdout:  # wait until it serves
                if "ready on" in line:
                    print(f"verifier: {line.strip()}", flush=True)
                    drain(verifier)
                    break
            else:
                print("verifier failed to start", file=sys.stderr)
                return 1
            tails = []
            for i in range(args.cameras):
                procs.append(_spawn([
                    "camera", "--broker", broker.url, "--device-id", f"cam-{i + 1}",
                    "--source", f"synthetic:{args.seed + 100 * i}", "--draft-model", args.draft_model,
                    "--max-events", str(args.events), "--realtime", "--temperature", str(args.temperature),
                    "--seed", str(args.seed + i),
                ]))
                tails.append(drain(procs[-1]))
            print(f"cameras: {args.cameras} synthetic cameras, {args.events} events each\n", flush=True)
            seen = asyncio.run(dashboard(broker.url, "edgespec/v1", args.cameras * args.events, args.timeout))
            failed = [i for i, p in enumerate(procs[1:]) if p.wait(timeout=60) != 0]
            for i in failed:
                print(f"camera cam-{i + 1} failed:\n" + "".join(tails[i]), file=sys.stderr)
            return 0 if seen == args.cameras * args.events and not failed else 1
        finally:
            if web is not None:
                web.stop()
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=10)


def register(sub) -> None:
    p = sub.add_parser("demo", help="broker + verifier + three synthetic cameras, captions as they arrive")
    p.add_argument("--cameras", type=int, default=3)
    p.add_argument("--events", type=int, default=3, help="captions per camera")
    p.add_argument("--port", type=int, default=0, help="broker port (0: a free one)")
    p.add_argument("--target-model", default="default")
    p.add_argument("--draft-model", default="default")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--dashboard-port", type=int, help="also serve the live web dashboard on this port (0: a free one)")
    p.set_defaults(func=cmd_demo)
