"""transport.netem.NetemProxy and `edgespec netem`: added delay, order under jitter, the rate
limit, both kinds of cut, a clean stop; then an MQTT client through the proxy to a real
Mosquitto, and the command as a process. Timings: lower bounds are firm (the proxy never
releases early), upper bounds loose (a shared, noisy machine)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from transport.netem import Impairments, NetemError, NetemProxy, _Pipe, parse_hostport

REPO = Path(__file__).resolve().parent.parent
SLACK_S = 0.002  # timer granularity allowed below a lower bound


# ------------------------------------------------------------------ helpers


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A plain asyncio echo server on a free loopback port."""
    handlers: set[asyncio.Task] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def connect(proxy: NetemProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes = b"ping") -> float:
    """Seconds for `payload` to come back from the echo server."""
    t0 = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
    return time.perf_counter() - t0


async def closed(reader: asyncio.StreamReader, timeout_s: float = 2.0) -> bool:
    """True when the connection ends (EOF or reset) within `timeout_s`."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout_s) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def run(coro, timeout_s: float = 20):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


# ------------------------------------------------------------------ the proxy


def test_delay_adds_twice_the_one_way_delay_to_a_round_trip_and_changes_at_run_time():
    async def scenario():
        async with echo_server() as port, NetemProxy("127.0.0.1", port, impairments=Impairments(delay_ms=40)) as px:
            reader, writer = await connect(px)
            slow = [await ping(reader, writer) for _ in range(5)]
            px.set(delay_ms=5)
            fast = [await ping(reader, writer) for _ in range(5)]
            writer.close()
            return slow, fast, px.stats

    slow, fast, stats = run(scenario())
    print(f"RTT with 40 ms each way: min {min(slow) * 1000:.1f} ms, median {statistics.median(slow) * 1000:.1f} ms; "
          f"with 5 ms: min {min(fast) * 1000:.1f} ms, median {statistics.median(fast) * 1000:.1f} ms")
    assert min(slow) >= 0.080 - SLACK_S
    assert statistics.median(slow) < 0.080 + 0.15
    assert min(fast) >= 0.010 - SLACK_S
    assert statistics.median(fast) < 0.010 + 0.15
    assert stats.connections == 1 and stats.bytes_up == stats.bytes_down == 10 * 4


def test_jitter_never_reorders_bytes():
    """1.5 MB of random bytes in random-sized writes, each read stamped with its own jitter
    sample (up to ±20 ms around 10 ms): they come back intact and in order."""
    rng = random.Random(7)
    payload = rng.randbytes(1_500_000)

    async def scenario():
        async with echo_server() as port, NetemProxy("127.0.0.1", port, seed=3,
                                                     impairments=Impairments(delay_ms=10, jitter_ms=20)) as px:
            reader, writer = await connect(px)

            async def send():
                at = 0
                while at < len(payload):
                    n = rng.randint(1, 40_000)
                    writer.write(payload[at:at + n])
                    at += n
                    await writer.drain()
                    await asyncio.sleep(rng.choice((0, 0, 0.001)))

            sender = asyncio.create_task(send())
            got = await reader.readexactly(len(payload))
            await sender
            writer.close()
            return got, px.stats

    got, stats = run(scenario())
    assert got == payload
    assert stats.bytes_up == stats.bytes_down == len(payload)


def test_release_times_are_ordered_bounded_and_seeded():
    """The schedule alone: each chunk no sooner than its delay minus jitter, never before the
    chunk in front of it, and the same seed gives the same schedule."""
    def schedule(seed: str) -> list[float]:
        proxy = SimpleNamespace(impairments=Impairments(delay_ms=30, jitter_ms=25))
        pipe = _Pipe(proxy, None, None, True, random.Random(seed))  # type: ignore[arg-type]
        for i in range(500):
            pipe._stamp(b"x", i * 0.001)
        return [t for t, _ in pipe._items]

    times = schedule("a")
    assert times == sorted(times)
    assert all(t >= i * 0.001 + 0.005 - 1e-9 for i, t in enumerate(times))
    assert all(t <= i * 0.001 + 0.055 + 1e-9 or t == times[i - 1] for i, t in enumerate(times))
    assert times == schedule("a") and times != schedule("b")


def test_rate_limit_takes_at_least_the_serialization_time():
    """60 kB one way at 400 kbit/s takes at least 1.2 s, at 0 (no limit) far less."""
    size, rate = 60_000, 400.0

    async def transfer(limit: float) -> float:
        done = asyncio.Event()
        seen = 0

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal seen
            while seen < size and (data := await reader.read(65536)):
                seen += len(data)
            done.set()
            writer.close()

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        async with NetemProxy("127.0.0.1", server.sockets[0].getsockname()[1],
                              impairments=Impairments(rate_kbit=limit)) as px:
            _, writer = await connect(px)
            t0 = time.perf_counter()
            writer.write(b"\0" * size)
            await writer.drain()
            await asyncio.wait_for(done.wait(), 10)
            took = time.perf_counter() - t0
            writer.close()
        server.close()
        await server.wait_closed()
        return took

    limited = run(transfer(rate))
    free = run(transfer(0))
    expected = size * 8 / (rate * 1000)
    print(f"{size} B at {rate:g} kbit/s: {limited:.3f} s (serialization {expected:.3f} s); unlimited {free:.3f} s")
    assert limited >= expected - SLACK_S
    assert limited < expected * 1.5 + 0.5
    assert free < expected / 4


def test_drop_cut_resets_live_and_new_connections_until_restore():
    async def scenario():
        async with echo_server() as port, NetemProxy("127.0.0.1", port) as px:
            reader, writer = await connect(px)
            await ping(reader, writer)
            px.cut()  # "drop"
            assert await closed(reader)
            writer.close()
            with pytest.raises(ConnectionRefusedError):  # not listening while cut
                await connect(px)
            assert px.cut_mode == "drop"
            px.restore()
            r3, w3 = await connect(px)
            await ping(r3, w3)
            px.cut_for(0.3)
            assert await closed(r3)
            w3.close()
            px.restore()  # at once, then a cut again before the listener is back
            px.cut()
            px.cut("blackhole")  # listening again: new connections are held
            r5, w5 = await connect(px)
            w5.write(b"x")
            px.cut()  # and dropped
            assert await closed(r5)
            w5.close()
            px.restore()
            px.cut_for(0.3)
            await asyncio.sleep(0.4)
            assert px.cut_mode is None
            r4, w4 = await connect(px)
            await ping(r4, w4)
            w4.close()
            return px.stats

    stats = run(scenario())
    assert (stats.connections, stats.dropped, stats.cuts) == (4, 3, 4)


def test_blackhole_holds_bytes_and_releases_them_on_restore():
    """Live and new connections stay open but silent through a blackhole; on restore the held
    bytes arrive, no sooner than a round trip after it."""
    delay = 0.02

    async def scenario():
        async with echo_server() as port, NetemProxy("127.0.0.1", port,
                                                     impairments=Impairments(delay_ms=delay * 1000)) as px:
            reader, writer = await connect(px)
            await ping(reader, writer)
            px.cut("blackhole")
            writer.write(b"held")
            r2, w2 = await connect(px)
            w2.write(b"new")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.3)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r2.read(1), 0.05)
            t0 = time.perf_counter()
            px.restore()
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
            took = time.perf_counter() - t0
            assert await asyncio.wait_for(r2.readexactly(3), 5) == b"new"
            writer.close()
            w2.close()
            return took, px.stats

    took, stats = run(scenario())
    assert took >= 2 * delay - SLACK_S
    assert (stats.connections, stats.dropped) == (2, 0)


def test_stop_leaves_no_task_socket_or_listener():
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def scenario():
        async with echo_server() as port:
            before, tasks_before = fds(), asyncio.all_tasks()
            px = NetemProxy("127.0.0.1", port, impairments=Impairments(delay_ms=200))
            await px.start()
            conns = [await connect(px) for _ in range(3)]
            for _, writer in conns[:2]:
                writer.write(b"in flight")  # queued in the proxy when it stops
            await asyncio.sleep(0.05)
            assert px.stats.active == 3
            await px.stop()
            for reader, writer in conns:
                assert await closed(reader)
                writer.close()
                await writer.wait_closed()
            await asyncio.sleep(0.05)
            others = asyncio.all_tasks() - tasks_before
            assert fds() == before and px.stats.active == 0
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(*px.address)
            return [t for t in others if "echo" not in repr(t.get_coro())]

    assert run(scenario()) == []


def test_settings_and_addresses_are_checked():
    with pytest.raises(NetemError, match="delay ms"):
        Impairments(delay_ms=-1)
    with pytest.raises(NetemError, match="rate kbit"):
        Impairments(rate_kbit=float("nan"))
    assert parse_hostport("1883", default_host="127.0.0.1") == ("127.0.0.1", 1883)
    assert parse_hostport("broker.local:8883") == ("broker.local", 8883)
    assert parse_hostport("[::1]:1883") == ("::1", 1883)
    for bad in ("1883", "host:", ":1883", "host:99999", "host:x"):
        with pytest.raises(NetemError):
            parse_hostport(bad)
    proxy = NetemProxy("127.0.0.1", 1)
    with pytest.raises(NetemError, match="cut mode"):
        proxy.cut("sideways")  # type: ignore[arg-type]
    with pytest.raises(NetemError, match="jitter ms"):
        proxy.set(jitter_ms=-3)


# ------------------------------------------------------------------ through Mosquitto


@pytest.mark.broker
def test_mqtt_round_trip_through_the_proxy_and_reconnect_after_a_cut(mosquitto):
    """An MQTT v5 client behind a 30 ms-each-way proxy: a QoS 1 publish to its own
    subscription comes back after at least 60 ms; a drop cut breaks the connection, and after
    restore the client reconnects and messages flow again."""
    import aiomqtt

    from transport.client import make_client

    delay, topic = 0.03, "netem/test/echo"

    async def session(px: NetemProxy, n: int) -> list[float]:
        """Connect (retrying while refused), then `n` timed publish -> delivery round trips."""
        deadline = time.monotonic() + 10
        while True:
            client = make_client(f"mqtt://127.0.0.1:{px.port}", client_id="netem-test", keepalive=5, timeout_s=3)
            try:
                await client.__aenter__()
                break
            except aiomqtt.MqttError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        try:
            await client.subscribe(topic, qos=1)
            rtts = []
            for i in range(n):
                t0 = time.perf_counter()
                await client.publish(topic, f"m{i}".encode(), qos=1)
                msg = await asyncio.wait_for(anext(aiter(client.messages)), 5)
                rtts.append(time.perf_counter() - t0)
                assert msg.payload == f"m{i}".encode()
            return rtts
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def scenario():
        async with NetemProxy("127.0.0.1", mosquitto.port, impairments=Impairments(delay_ms=delay * 1000)) as px:
            client = make_client(f"mqtt://127.0.0.1:{px.port}", client_id="netem-cut", keepalive=5, timeout_s=3)
            t0 = time.perf_counter()
            async with client:
                connect_s = time.perf_counter() - t0
                await client.subscribe(topic, qos=1)
                px.cut()
                with pytest.raises(aiomqtt.MqttError):
                    await asyncio.wait_for(anext(aiter(client.messages)), 5)
                refused = asyncio.create_task(session(px, 1))  # retries while the link is down
                await asyncio.sleep(0.5)
                assert not refused.done()
                t_restore = time.perf_counter()
                px.restore()
                after_cut = await refused
                back_s = time.perf_counter() - t_restore
            rtts = await session(px, 5)
            return connect_s, after_cut, back_s, rtts, px.stats

    connect_s, after_cut, back_s, rtts, stats = run(scenario(), 25)
    print(f"MQTT through 30 ms each way: CONNECT->CONNACK {connect_s * 1000:.1f} ms, QoS 1 publish->delivery "
          f"min {min(rtts) * 1000:.1f} ms, median {statistics.median(rtts) * 1000:.1f} ms; after the cut "
          f"{after_cut[0] * 1000:.1f} ms; restore -> reconnected and one message through in {back_s:.2f} s")
    assert connect_s >= 2 * delay - SLACK_S
    assert min(rtts + after_cut) >= 2 * delay - SLACK_S
    assert statistics.median(rtts) < 2 * delay + 0.2
    assert back_s < 5
    assert stats.dropped == 1 and stats.connections == 3


# ------------------------------------------------------------------ the command


def _edgespec(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgespec.cli", *argv], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_netem_command_forwards_takes_stdin_commands_and_stops_on_ctrl_c():
    async def echo_forever(stop: asyncio.Event, ready: asyncio.Future) -> None:
        async with echo_server() as port:
            ready.set_result(port)
            await stop.wait()

    async def scenario():
        stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
        server = asyncio.create_task(echo_forever(stop, ready))
        port = await ready
        proc = await asyncio.to_thread(
            _edgespec, "netem", "--listen", "0", "--to", f"127.0.0.1:{port}", "--delay-ms", "25", "--seed", "1",
            stdin=subprocess.PIPE)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
            assert line.startswith("netem: 127.0.0.1:") and f"-> 127.0.0.1:{port}" in line, line
            assert "delay 25 ms each way (RTT +50 ms)" in line, line
            listen = int(line.split("127.0.0.1:")[1].split()[0])
            reader, writer = await asyncio.open_connection("127.0.0.1", listen)
            slow = await ping(reader, writer)
            proc.stdin.write("delay 2\n")
            proc.stdin.flush()
            answer = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 5)
            assert "delay 2 ms each way" in answer, answer
            fast = await ping(reader, writer)
            proc.stdin.write("cut blackhole\nbogus\nstats\n")
            proc.stdin.flush()
            lines = [await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 5) for _ in range(3)]
            assert "cut (blackhole) until restore" in lines[0] and "unknown command" in lines[1], lines
            assert "1 connections (1 open, 0 dropped" in lines[2] and "cut (blackhole)" in lines[2], lines
            writer.close()
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.to_thread(proc.communicate, None, 10)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stop.set()
            await server
        return slow, fast, proc.returncode, took, out, err

    slow, fast, rc, took, out, err = run(scenario(), 30)
    assert slow >= 0.050 - SLACK_S and fast < slow
    assert rc == 0 and took < 2.0, (rc, took, err)
    assert "Traceback" not in err and "netem: stopped; 1 connections" in out, (out, err)


@pytest.mark.parametrize("flags, message", [
    (["--delay-ms", "-5"], "--delay-ms -5: must be a number >= 0"),
    (["--to", "nohost"], "'nohost': expected HOST:PORT"),
    (["--listen", "127.0.0.1:x"], "port 'x' is not a number"),
    (["--listen", "PORT_IN_USE"], "cannot listen on 127.0.0.1:"),
])
def test_netem_command_bad_flags_give_one_line(flags, message):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = {"--listen": "0", "--to": "127.0.0.1:1883"}
        for key, value in zip(flags[::2], flags[1::2]):
            argv[key] = value.replace("PORT_IN_USE", str(taken.getsockname()[1]))
        proc = _edgespec("netem", *(x for kv in argv.items() for x in kv), stdin=subprocess.DEVNULL)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, (out, err)
    assert err.strip().splitlines() == [err.strip()] and err.startswith("edgespec: error: "), err
    assert message in err, err
