"""Run a Mosquitto process with one of the project's configs (the broker's thin I/O edge).

`MosquittoBroker` is used by `edgespec broker`, `edgespec demo`, `edgespec bench` and the test
fixtures, so every path talks to a real Mosquitto started the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from transport.lifecycle import deferred_signals, interrupted

CONFIG_DIR = Path(__file__).resolve().parent
DEV_CONFIG = CONFIG_DIR / "mosquitto-dev.conf"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 1.5  # then SIGKILL: a stopped broker is gone within 2 s


class BrokerError(RuntimeError):
    """Mosquitto could not be found, configured or started."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto not found: run `make setup` (installs it with apt) or put it on PATH")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def render_config(template: str, *, port: int, extra: str = "") -> str:
    """Config text with the first `listener` line moved to `port`, plus `extra` lines."""
    text, n = re.subn(r"(?m)^listener\s+\d+", f"listener {port}", template, count=1)
    if n != 1:
        raise BrokerError("config has no `listener PORT` line to rewrite")
    return text + ("\n" + extra + "\n" if extra else "")


WS_MARKER = "# edgespec-runner: websockets"


def render_ws_port(text: str, ws_port: int) -> tuple[str, bool]:
    """Config text with the port of the `listener` line after the `WS_MARKER` comment set to
    `ws_port` (the development config's websockets listener); False when there is no marker."""
    text, n = re.subn(rf"(?m)^({re.escape(WS_MARKER)}\s*\nlistener\s+)\d+", rf"\g<1>{ws_port}", text, count=1)
    return text, n == 1


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"mosquitto exited with code {proc.returncode} during start")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise BrokerError(f"mosquitto did not listen on {host}:{port} within {timeout_s:.0f} s")


@dataclass
class MosquittoBroker:
    """A Mosquitto child process on `port` with `config` (a file whose listener is rewritten).

    Use as a context manager; `stop()` terminates it and removes its runtime folder.
    """

    port: int = 0
    config: Path = DEV_CONFIG
    host: str = "127.0.0.1"
    extra_config: str = ""
    # The websockets listener after WS_MARKER (the development config has one): 0 picks a free
    # port at start; None after start when the config has none.
    ws_port: int | None = 0
    quiet: bool = True
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _runtime: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str | None:
        """ws://HOST:PORT of the websockets listener (for `edgespec dashboard`), or None."""
        return f"ws://{self.host}:{self.ws_port}" if self.ws_port else None

    def start(self) -> MosquittoBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        try:
            self._runtime = tempfile.TemporaryDirectory(prefix="edgespec-broker-")
            conf_path = Path(self._runtime.name) / "mosquitto.conf"
            ws_port = self.ws_port or free_port(self.host)
            text, has_ws = render_ws_port(
                render_config(self.config.read_text(), port=self.port, extra=self.extra_config), ws_port)
            self.ws_port = ws_port if has_ws else None
            conf_path.write_text(text)
            stderr = subprocess.DEVNULL if self.quiet else None
            self._proc = subprocess.Popen(
                [find_mosquitto(), "-c", str(conf_path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a terminal's Ctrl-C reaches only us; stop() ends it
            )
            wait_for_port(self.host, self.port, START_TIMEOUT_S, self._proc)
            if self.ws_port:  # the websockets listener opens a moment after the TCP one
                wait_for_port(self.host, self.ws_port, START_TIMEOUT_S, self._proc)
        except BaseException:  # a failed start or a stop signal meanwhile leaves nothing behind
            self.stop()
            raise
        return self

    def reload(self) -> None:
        """Ask Mosquitto to re-read password and ACL files (SIGHUP)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Terminate Mosquitto (SIGKILL after STOP_TIMEOUT_S) and remove the runtime folder; a
        second Ctrl-C or SIGTERM meanwhile does not cut this short."""
        with deferred_signals(raise_after=False):
            self._stop()

    def _stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if self._runtime is not None:
            self._runtime.cleanup()
            self._runtime = None

    def run_foreground(self, announce=None) -> int:
        """Run until Mosquitto exits or the user interrupts (`edgespec broker`): Ctrl-C, and
        SIGTERM where `transport.lifecycle.sigterm_as_interrupt` is installed, stop Mosquitto
        and remove the runtime folder. `announce(url)` is called once it listens."""
        self.quiet = False
        try:
            self.start()
            assert self._proc is not None
            if announce is not None:
                announce(self.url)
            return self._proc.wait()
        except KeyboardInterrupt:
            interrupted()  # the command then leaves at once (transport.lifecycle.finish)
            return 0
        finally:
            self.stop()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
