"""Process lifecycles: every command that starts children ends them on SIGINT and SIGTERM.

* `sigterm_as_interrupt()` (installed by `edgespec` for every command) makes SIGTERM do what
  Ctrl-C does: it calls the current SIGINT handler, so synchronous code gets
  `KeyboardInterrupt` (its `finally` blocks and context managers run) and `asyncio.run`
  cancels its main task. Commands that install their own asyncio handlers (the verifier) keep
  them while their loop runs.
* `spawn()` starts a child in its own session (a terminal's Ctrl-C reaches only the parent,
  which then stops the children in order) and, for `edgespec` children, asks the kernel to
  send them SIGTERM should the parent die without cleaning up (`EDGESPEC_PARENT_PID`).
* `stop_children()` sends SIGTERM to every child's process group at once, waits at most
  `grace_s` for all of them together, then SIGKILLs what is left.
* `deferred_signals()` holds SIGINT/SIGTERM back while a child is being started or the
  children are being stopped, so no signal lands between a fork and the bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PARENT_ENV = "EDGESPEC_PARENT_PID"
GRACE_S = 1.5  # children get this long after SIGTERM; everything is gone within 2 s
_PR_SET_PDEATHSIG = 1

received: list[int] = []  # stop signals seen by this process, in order (SIGINT: where it was noted)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _sigterm(signum: int, frame: FrameType | None) -> None:
    received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # default_int_handler raises; asyncio's cancels its main task
    else:
        raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """SIGTERM behaves like Ctrl-C in this process from now on (main thread only)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, _sigterm)


def note(signum: int) -> None:
    """Record a stop signal handled elsewhere (an asyncio handler, a KeyboardInterrupt)."""
    received.append(signum)


def interrupted() -> None:
    """A KeyboardInterrupt was caught: note SIGINT unless a SIGTERM caused it."""
    if not received:
        received.append(signal.SIGINT)


def exit_code() -> int:
    """The shell's convention for a process stopped by a signal: 128 + the signal."""
    return 128 + (received[-1] if received else signal.SIGINT)


def finish(code: int) -> int:
    """After a stop signal: run the exit handlers, flush and leave at once. A normal interpreter
    exit with torch and transformers loaded spends ~1.5 s tearing modules down, which would
    break the 2 s promise; without a stop signal this just returns `code`."""
    if not received or not _main_thread():
        return code
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def die_with_parent() -> None:
    """In an `edgespec` child of a command that set EDGESPEC_PARENT_PID: get SIGTERM when that
    parent dies (Linux), and stop at once if it is already gone."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_signals(*, raise_after: bool = True) -> Iterator[list[int]]:
    """SIGINT/SIGTERM are only recorded inside the block; afterwards the old handlers return
    and, with `raise_after`, a recorded signal raises KeyboardInterrupt then."""
    if not _main_thread():
        yield []
        return
    got: list[int] = []
    old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, lambda n, _f: got.append(n))
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        received.extend(n for n in got if n == signal.SIGTERM)
        if got and raise_after and sys.exc_info()[0] is None:
            raise KeyboardInterrupt


def spawn(cmd: Sequence[str], procs: list[subprocess.Popen], *, edgespec_child: bool = True,
          **kwargs) -> subprocess.Popen:
    """Start `cmd` in its own session and append it to `procs` before any stop signal can act."""
    env = dict(kwargs.pop("env", None) or os.environ)
    if edgespec_child:
        env[PARENT_ENV] = str(os.getpid())
    with deferred_signals():
        proc = subprocess.Popen(list(cmd), env=env, start_new_session=True, **kwargs)
        procs.append(proc)
    return proc


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_children(procs: Sequence[subprocess.Popen], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM all children at once, SIGKILL those still running after `grace_s`; returns the
    pids that had to be killed. Stop signals arriving meanwhile are absorbed (we are stopping)."""
    killed: list[int] = []
    with deferred_signals(raise_after=False):
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
                killed.append(proc.pid)
    return killed


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def all_exited(procs: Sequence[subprocess.Popen]) -> None:
    """Return once every process in `procs` has exited (a pidfd per process on Linux 5.3+,
    else a 0.2 s poll)."""
    loop = asyncio.get_running_loop()
    for proc in procs:
        if proc.poll() is not None:
            continue
        try:
            fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            while proc.poll() is None:
                await asyncio.sleep(0.2)
            continue
        done = loop.create_future()
        loop.add_reader(fd, _resolve, done)
        try:
            await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        proc.poll()
