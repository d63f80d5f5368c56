"""`edgespec netem`: a TCP proxy in front of the broker adding delay, jitter, a rate limit and cuts.

The proxy is `transport.netem.NetemProxy`. It runs in the foreground until Ctrl-C (or SIGTERM)
and reads operator commands from stdin, one per line:

    cut [SECONDS] [drop|blackhole]   cut the link (for SECONDS, else until `restore`)
    restore                          end a cut
    delay MS | jitter MS | rate KBIT change an impairment (rate 0: no limit)
    stats                            print the counters

Each command answers with one line. End of stdin (e.g. `< /dev/null`) leaves it running.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import threading
from typing import Any

from transport.netem import CUT_MODES, CutMode, Impairments, NetemError, NetemProxy, parse_hostport

NETEM_HELP = "a TCP proxy in front of the broker adding delay, jitter, a rate limit and cuts"
COMMANDS_HELP = ("stdin commands: cut [SECONDS] [drop|blackhole], restore, delay MS, jitter MS, "
                 "rate KBIT, stats")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "netem", help=NETEM_HELP,
        description="Forward every TCP connection made to --listen to --to through an emulated link: one-way "
                    "delay in each direction (the round trip grows by twice it), jitter that never reorders "
                    "bytes, a rate limit per direction and connection, and cuts. Runs until Ctrl-C. "
                    + COMMANDS_HELP + ".")
    p.add_argument("--listen", required=True, metavar="HOST:PORT",
                   help="where clients connect; PORT alone listens on 127.0.0.1, port 0 on any free port")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the upstream, e.g. the broker 127.0.0.1:1883")
    p.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay, each direction (default 0)")
    p.add_argument("--jitter-ms", type=float, default=0.0,
                   help="± this much, uniform, per chunk; bytes are never reordered (default 0)")
    p.add_argument("--rate-kbit", type=float, default=0.0,
                   help="kbit/s per direction per connection; 0: no limit (default 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the jitter (default: random)")
    p.set_defaults(func=cmd_netem)


def cmd_netem(args: argparse.Namespace) -> int:
    listen_host, listen_port = parse_hostport(args.listen, default_host="127.0.0.1")
    up_host, up_port = parse_hostport(args.to)
    if up_port == 0:
        raise NetemError(f"--to {args.to}: port 0 is not an upstream port")
    flags = (("--delay-ms", args.delay_ms), ("--jitter-ms", args.jitter_ms), ("--rate-kbit", args.rate_kbit))
    for flag, value in flags:
        if not math.isfinite(value) or value < 0:
            raise NetemError(f"{flag} {value:g}: must be a number >= 0")
    impairments = Impairments(args.delay_ms, args.jitter_ms, args.rate_kbit)
    asyncio.run(_run(NetemProxy(up_host, up_port, listen_host=listen_host, listen_port=listen_port,
                                impairments=impairments, seed=args.seed)))
    return 0


async def _run(proxy: NetemProxy) -> None:
    from transport.lifecycle import note

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: int) -> None:
        note(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    async with proxy:
        up_host, up_port = proxy.upstream
        print(f"netem: {proxy.listen_host}:{proxy.port} -> {up_host}:{up_port}, {proxy.impairments.describe()}, "
              f"jitter seed {proxy.seed}; Ctrl-C stops it; {COMMANDS_HELP}", flush=True)
        _read_stdin(loop, proxy)
        await stop.wait()
    s = proxy.stats
    print(f"netem: stopped; {s.connections} connections, {s.bytes_up} B up, {s.bytes_down} B down", flush=True)


def _read_stdin(loop: asyncio.AbstractEventLoop, proxy: NetemProxy) -> None:
    """Operator commands from stdin, on a daemon thread; each runs on the event loop."""

    def reader() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(_command_line, proxy, line)

    if sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=reader, name="netem-stdin", daemon=True).start()


def _command_line(proxy: NetemProxy, line: str) -> None:
    try:
        print(f"netem: {operator_command(proxy, line)}", flush=True)
    except NetemError as exc:
        print(f"netem: {exc}", flush=True)


def operator_command(proxy: NetemProxy, line: str) -> str:
    """Run one stdin command on the proxy (inside its event loop); the line to print."""
    words = line.split()
    name, rest = words[0].lower(), words[1:]
    if name == "cut":
        mode: CutMode = "blackhole" if "blackhole" in rest else "drop"
        numbers = [w for w in rest if w not in CUT_MODES]
        if len(numbers) > 1:
            raise NetemError(f"{line.strip()!r}: expected cut [SECONDS] [drop|blackhole]")
        if numbers:
            seconds = _number(numbers[0], line)
            proxy.cut_for(seconds, mode)
            return f"cut ({mode}) for {seconds:g} s"
        proxy.cut(mode)
        return f"cut ({mode}) until restore"
    if name == "restore" and not rest:
        proxy.restore()
        return "restored"
    if name == "stats" and not rest:
        s = proxy.stats
        return (f"{s.connections} connections ({s.active} open, {s.dropped} dropped, "
                f"{s.upstream_failures} upstream failures), {s.bytes_up} B up, {s.bytes_down} B down, "
                f"{s.cuts} cuts; {'cut (' + proxy.cut_mode + ')' if proxy.cut_mode else 'link up'}")
    settings = {"delay": "delay_ms", "jitter": "jitter_ms", "rate": "rate_kbit"}
    if name in settings and len(rest) == 1:
        proxy.set(**{settings[name]: _number(rest[0], line)})
        return proxy.impairments.describe()
    raise NetemError(f"{line.strip()!r}: unknown command; {COMMANDS_HELP}")


def _number(text: str, line: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise NetemError(f"{line.strip()!r}: {text!r} is not a number") from None
