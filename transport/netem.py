"""An emulated network in front of a TCP service: delay, jitter, a rate limit and cuts.

`NetemProxy` listens on a host and port and forwards every connection it accepts to one
upstream address, both ways, through an impaired link. Pure asyncio, no MQTT knowledge; the
tests and `edgespec netem` put it in front of Mosquitto, where the kernel has no netem.

Each direction of each connection is a `_Pipe`: what is read is stamped with a release time
and written out, in order, once that time comes. For a chunk read at `now`:

* rate limit (`rate_kbit`, 0 for none): the chunk is cut into packets of at most `PACKET`
  bytes; each occupies this direction's link for `bytes * 8 / rate` seconds, after the packet
  before it (serialization delay, store and forward per packet). Per direction, per
  connection: two connections do not share one budget.
* delay (`delay_ms`, one way, applied in both directions: the round trip grows by 2x it) and
  jitter (`jitter_ms`, a sample uniform in [-jitter, +jitter] per chunk read, the one-way time
  never below 0) are added after serialization.
* order: a packet is never released before the one in front of it (release =
  max(previous release, link done + delay + jitter)), so jitter delays bytes but never
  reorders them. Jitter samples come from a `random.Random` per direction and connection,
  seeded from `seed`, the connection's number and the direction.

`set(...)` changes the impairments at run time; they apply to bytes read from then on (bytes
already queued keep their release times). At most `QUEUE_BYTES` wait per direction; beyond
that the proxy stops reading, and TCP back-pressure reaches the sender.

Cuts (`cut(mode)`, `cut_for(seconds, mode)`, `restore()`):

* `"drop"` (a broken link, the default): every live connection is reset (RST to both ends,
  queued bytes lost) and the listening socket is closed, so new connections are refused by the
  kernel (ECONNREFUSED) until `restore()` listens again on the same port. MQTT clients see
  the error at once and reconnect.
* `"blackhole"` (a dead route): connections stay open, nothing moves either way, and new
  connections are accepted but not forwarded. Bytes are held, not lost (TCP would retransmit
  them): on `restore()` they are released no sooner than one delay later, and waiting new
  connections go upstream. Clients notice only by their own timeouts (MQTT keepalive).

Limits: the TCP handshake with the proxy is local, so a new connection costs one round trip
less than on a real link with that delay; no loss or corruption is emulated other than cuts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import struct
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

CutMode = Literal["drop", "blackhole"]
CUT_MODES: tuple[CutMode, ...] = ("drop", "blackhole")
READ_BYTES = 64 * 1024  # one read from a socket
PACKET = 1500  # bytes per packet when a rate limit cuts a chunk up
QUEUE_BYTES = 1024 * 1024  # per direction; the proxy stops reading beyond it
RETRY_LISTEN_S = 1.0  # a timed restore whose port was taken tries again after this
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

log = logging.getLogger(__name__)


class NetemError(ValueError):
    """A setting or address the proxy cannot use; the message (one line) says why."""


@dataclass(frozen=True)
class Impairments:
    """One-way delay and jitter in ms, rate limit in kbit/s (0: none), per direction."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_kbit: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "rate_kbit"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise NetemError(f"{name.replace('_', ' ')} {value!r}: must be a number >= 0")

    def describe(self) -> str:
        rate = f"{self.rate_kbit:g} kbit/s" if self.rate_kbit else "no rate limit"
        return (f"delay {self.delay_ms:g} ms each way (RTT +{2 * self.delay_ms:g} ms), "
                f"jitter ±{self.jitter_ms:g} ms, {rate}")


@dataclass
class NetemStats:
    """Counters since the proxy started. `bytes_up`: client to upstream, as written."""

    connections: int = 0  # accepted
    active: int = 0  # open now
    dropped: int = 0  # connections reset by a drop cut
    upstream_failures: int = 0  # the upstream refused or could not be reached
    bytes_up: int = 0
    bytes_down: int = 0
    cuts: int = 0


def parse_hostport(text: str, default_host: str | None = None) -> tuple[str, int]:
    """(host, port) from `HOST:PORT`, `[V6]:PORT`, or `PORT` alone when `default_host` is
    given. Port 0 is allowed (for listening: the OS picks one)."""
    host: str | None
    text = text.strip()
    if text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
        if not sep:
            raise NetemError(f"{text!r}: expected [IPV6]:PORT")
    elif ":" in text:
        host, _, port_s = text.rpartition(":")
    else:
        host, port_s = default_host, text
        if host is None:
            raise NetemError(f"{text!r}: expected HOST:PORT")
    if not host:
        raise NetemError(f"{text!r}: the host is missing (expected HOST:PORT)")
    try:
        port = int(port_s)
    except ValueError:
        raise NetemError(f"{text!r}: port {port_s!r} is not a number (expected HOST:PORT)") from None
    if not 0 <= port <= 65535:
        raise NetemError(f"{text!r}: port {port} is out of range 0-65535")
    return host, port


def _reset(writer: asyncio.StreamWriter | None, rst: bool) -> None:
    """Close a connection's socket now; with `rst`, by a TCP reset."""
    if writer is None:
        return
    transport = writer.transport
    if rst:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


class _Pipe:
    """One direction of one connection: read, stamp release times, write in order."""

    def __init__(self, proxy: NetemProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 up: bool, rng: random.Random):
        self.proxy, self.reader, self.writer, self.up, self.rng = proxy, reader, writer, up, rng
        self._items: deque[tuple[float, bytes | None]] = deque()  # (release time, bytes; None: EOF)
        self._queued = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._link_free = 0.0  # when this direction's link finishes sending what it holds
        self._last_release = 0.0

    def _stamp(self, data: bytes | None, now: float) -> None:
        imp = self.proxy.impairments
        one_way = imp.delay_ms / 1000
        if imp.jitter_ms:
            one_way = max(0.0, one_way + self.rng.uniform(-imp.jitter_ms, imp.jitter_ms) / 1000)
        if data is None or not imp.rate_kbit:
            pieces: list[bytes | None] = [data]
        else:
            pieces = [data[i:i + PACKET] for i in range(0, len(data), PACKET)]
        for piece in pieces:
            done = now
            if piece is not None and imp.rate_kbit:
                self._link_free = max(self._link_free, now) + len(piece) * 8 / (imp.rate_kbit * 1000)
                done = self._link_free
            self._last_release = max(self._last_release, done + one_way)
            self._items.append((self._last_release, piece))
            self._queued += len(piece) if piece else 0
        self._wake.set()

    async def pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await self.reader.read(READ_BYTES)
            self._stamp(data or None, loop.time())
            if not data:
                return
            while self._queued >= QUEUE_BYTES:
                self._room.clear()
                await self._room.wait()

    async def pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        proxy = self.proxy
        floor = 0.0  # after a blackhole: nothing before restore + one delay
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            while True:
                if not proxy._flowing.is_set():
                    await proxy._flowing.wait()
                    floor = max(floor, proxy._restored_at + proxy.impairments.delay_ms / 1000)
                wait = max(self._items[0][0], floor) - loop.time()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            now = loop.time()
            out: list[bytes] = []
            eof = False
            while self._items and max(self._items[0][0], floor) <= now:
                _, piece = self._items.popleft()
                if piece is None:
                    eof = True
                    break
                out.append(piece)
            if out:
                data = b"".join(out)
                self._queued -= len(data)
                self.writer.write(data)
                if self.up:
                    proxy.stats.bytes_up += len(data)
                else:
                    proxy.stats.bytes_down += len(data)
                if self._queued < QUEUE_BYTES:
                    self._room.set()
                await self.writer.drain()
            if eof:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return


@dataclass(eq=False)
class _Connection:
    number: int
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    rst: bool = False  # close both ends by a reset (a drop cut, or one end reset)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def drop(self) -> None:
        self.rst = True
        if self.task is not None:
            self.task.cancel()


class NetemProxy:
    """A TCP proxy from `listen_host:listen_port` (0: the OS picks; see `.port` after start)
    to `upstream_host:upstream_port` through an impaired link (see the module's doc).

    Use as `async with NetemProxy(...) as proxy:`, or `await start()` / `await stop()`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0, impairments: Impairments | None = None, seed: int | None = None):
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.port = listen_port
        self.impairments = impairments or Impairments()
        self.seed = seed if seed is not None else random.randrange(1 << 32)
        self.stats = NetemStats()
        self._server: asyncio.Server | None = None
        self._relisten: asyncio.Task[None] | None = None  # restore() after a drop cut serves again
        self._relisten_sock: socket.socket | None = None
        self._running = False
        self._conns: set[_Connection] = set()
        self._cut: CutMode | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._restored_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> NetemProxy:
        if self._running:
            return self
        sock = self._listen_socket()
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)
        self._running = True
        return self

    def _listen_socket(self) -> socket.socket:
        """A socket listening on listen_host:port (SO_REUSEADDR, as asyncio's servers)."""
        try:
            infos = socket.getaddrinfo(self.listen_host, self.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, kind, proto, _, addr = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                sock.listen(128)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise NetemError(f"cannot listen on {self.listen_host}:{self.port}: "
                             f"{exc.strerror or exc}") from None
        return sock

    async def _serve_on(self, sock: socket.socket) -> None:
        # create_server with a socket and start_serving=False does not suspend: _server is set
        # in this task's first step, before anything can cancel it halfway
        self._server = await asyncio.start_server(self._accept, sock=sock, start_serving=False)
        self._relisten_sock = None
        await self._server.start_serving()

    def _listen_again(self) -> None:
        """Listen on the same port again after a drop cut closed it; NetemError if taken."""
        if not self._running or self._server is not None or self._relisten is not None:
            return
        self._relisten_sock = self._listen_socket()
        self._relisten = asyncio.get_running_loop().create_task(self._serve_on(self._relisten_sock))

    def _close_listener(self) -> None:
        """Stop listening: the server, or the socket a pending re-listen was about to serve."""
        task, self._relisten = self._relisten, None
        if task is not None:
            task.cancel()
        if self._relisten_sock is not None:
            self._relisten_sock.close()
            self._relisten_sock = None
        if self._server is not None:
            self._server.close()
            self._server = None

    async def stop(self) -> None:
        """Stop listening, close every connection, and wait for all of the proxy's tasks."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._running = False
        relisten, server = self._relisten, self._server
        self._close_listener()
        if relisten is not None:
            await asyncio.gather(relisten, return_exceptions=True)
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> NetemProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.port

    # ------------------------------------------------------------ control

    def set(self, *, delay_ms: float | None = None, jitter_ms: float | None = None,
            rate_kbit: float | None = None) -> Impairments:
        """Change the impairments given (the others stay); they apply to bytes read from now."""
        changes = {k: float(v) for k, v in
                   (("delay_ms", delay_ms), ("jitter_ms", jitter_ms), ("rate_kbit", rate_kbit)) if v is not None}
        self.impairments = replace(self.impairments, **changes)
        return self.impairments

    @property
    def cut_mode(self) -> CutMode | None:
        """The current cut's mode, None while the link is up."""
        return self._cut

    def cut(self, mode: CutMode = "drop") -> None:
        """Cut the link until `restore()` (see the module's doc for the two modes)."""
        if mode not in CUT_MODES:
            raise NetemError(f"cut mode {mode!r}: expected one of {', '.join(CUT_MODES)}")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if mode == "blackhole":
            self._listen_again()  # after a drop cut: new connections are accepted and held
        self.stats.cuts += self._cut is None
        self._cut = mode
        self._flowing.clear()
        if mode == "drop":
            self._close_listener()  # new connections are refused by the kernel
            for conn in list(self._conns):
                self.stats.dropped += 1
                conn.drop()

    def cut_for(self, seconds: float, mode: CutMode = "drop") -> None:
        """Cut now and restore after `seconds` (a later cut or restore cancels the timer)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise NetemError(f"cut for {seconds!r} s: must be a number >= 0")
        self.cut(mode)
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_restore)

    def _timed_restore(self) -> None:
        self._timer = None
        try:
            self.restore()
        except NetemError as exc:  # the port was taken meanwhile: still cut, try again
            log.warning("netem: restore failed (%s); retrying in %g s", exc, RETRY_LISTEN_S)
            self._timer = asyncio.get_running_loop().call_later(RETRY_LISTEN_S, self._timed_restore)

    def restore(self) -> None:
        """End a cut: held bytes (blackhole) move again, new connections go upstream."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._cut is None:
            return
        self._listen_again()
        self._cut = None
        self._restored_at = asyncio.get_running_loop().time()
        self._flowing.set()

    # ------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        conn = _Connection(self.stats.connections, writer, task=asyncio.current_task())
        if self._cut == "drop" or not self._running:  # waited in the listen backlog
            self.stats.dropped += self._cut == "drop"
            _reset(writer, rst=True)
            return
        self._conns.add(conn)
        self.stats.active += 1
        try:
            await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            pass  # cut, or the proxy stops: the connection ends here
        except OSError:
            conn.rst = True
        finally:
            for task in conn.tasks:
                task.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            _reset(conn.upstream, conn.rst)
            _reset(writer, conn.rst)
            self._conns.discard(conn)
            self.stats.active -= 1

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._flowing.wait()  # a blackhole holds a new connection here
        try:
            up_reader, conn.upstream = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats.upstream_failures += 1
            conn.rst = True
            return
        for sock in (writer.get_extra_info("socket"), conn.upstream.get_extra_info("socket")):
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipes = [_Pipe(self, reader, conn.upstream, True, random.Random(f"{self.seed}:{conn.number}:up")),
                 _Pipe(self, up_reader, writer, False, random.Random(f"{self.seed}:{conn.number}:down"))]
        conn.tasks = [asyncio.create_task(job()) for p in pipes for job in (p.pump_in, p.pump_out)]
        done, _ = await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_EXCEPTION)
        if any(not t.cancelled() and t.exception() is not None for t in done):
            conn.rst = True  # one end failed or was reset: reset the other too
