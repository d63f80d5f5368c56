"""Test helpers: the processes under a pid (psutil when installed, else /proc), real commands
as children with a private temp folder, and a paho subscriber that says when it is in place."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_CACHES = ("torchinductor_",)

try:  # pragma: no cover - either branch is fine
    import psutil
except ImportError:
    psutil = None


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time in ticks) from /proc/PID/stat, or None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> set[tuple[int, int]]:
    """Every process below `pid` now, as (pid, start time): the start time tells a reused pid."""
    if psutil is not None:
        try:
            return {(p.pid, int(p.create_time() * 1000)) for p in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append((int(entry), st[2]))
    found: set[tuple[int, int]] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def alive(procs: set[tuple[int, int]]) -> list[int]:
    """The pids of `procs` still running (a zombie or a reused pid counts as gone)."""
    left = []
    for pid, start in procs:
        if psutil is not None:
            try:
                p = psutil.Process(pid)
                if int(p.create_time() * 1000) == start and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
            continue
        st = _stat(pid)
        if st is not None and st[2] == start and st[1] != "Z":
            left.append(pid)
    return left


def command_names(procs: set[tuple[int, int]]) -> list[str]:
    names = []
    for pid, _ in procs:
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
    return names


class Command:
    """`python -m edgespec.cli ARGS` with its own TMPDIR (so its temp folders can be counted);
    its output is read on a thread and lines can be awaited."""

    def __init__(self, args: list[str], tmp: Path, env: dict | None = None, *, argv: list[str] | None = None,
                 base_env: dict | None = None):
        """`argv` instead of `edgespec ARGS`: run that; `base_env` instead of this process's."""
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self._new = threading.Condition()
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-m", "edgespec.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**(os.environ if base_env is None else base_env), "PYTHONUNBUFFERED": "1",
                 "EDGESPEC_THREADS": "1", "TMPDIR": str(tmp), **(env or {})})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self.lines.append("")  # end of output
            self._new.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout_s: float) -> str:
        """The first line holding `text`; fails when the command ends or the time is up first."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._new:
            while True:
                for line in self.lines[seen:]:
                    if text in line:
                        return line
                    if line == "":
                        raise AssertionError(f"exited ({self.proc.poll()}) before {text!r}:\n{self.output}")
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {text!r} within {timeout_s} s:\n{self.output}")
                self._new.wait(left)

    def temp_folders(self) -> list[str]:
        """What the command left in its TMPDIR, less torch's per-user compile cache
        (`torchinductor_<user>`: made by importing torch, reused by every later run)."""
        return sorted(p.name for p in self.tmp.iterdir() if not p.name.startswith(SHARED_CACHES))

    def kill(self) -> None:
        """Last resort for a failed test: everything under the command, then the command."""
        for pid in alive(descendants(self.proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def subscriber(url: str, topic: str, timeout_s: float = 10.0):
    """A paho client subscribed to `topic`; yields a queue of (topic, payload) once the broker
    has acknowledged the subscription."""
    import paho.mqtt.client as paho

    from transport.urls import BrokerAddress

    got: queue.Queue = queue.Queue()
    subscribed = threading.Event()
    addr = BrokerAddress.parse(url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    client.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(addr.host, addr.port)
    client.loop_start()
    try:
        assert subscribed.wait(timeout_s), f"no SUBACK for {topic} within {timeout_s} s"
        yield got
    finally:
        client.loop_stop()
        client.disconnect()


@contextlib.contextmanager
def retained(url: str, topic: str, payload: bytes):
    """`payload` retained on `topic` while inside (e.g. a verifier's `online` status that no
    verifier stands behind); cleared after."""
    import paho.mqtt.client as paho

    from transport.urls import BrokerAddress

    addr = BrokerAddress.parse(url)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect(addr.host, addr.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
        yield
    finally:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
