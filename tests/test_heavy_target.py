"""A heavy target: a verifier whose every forward takes longer than the devices' timeout.

Six devices open at once against a verifier whose target forwards each sleep `FORWARD_S`
(longer than the devices' `TIMEOUT_S`): every session must complete with the target's own
greedy output, without a re-open, and nothing may be logged on the way (no warning, no
"Future exception was never retrieved"). The verifier runs its long batches on its model
thread and tells the waiting devices QUEUED meanwhile (schemas/README.md, "Waiting for a
reply"). A device that really gives up (its verifier went away for good) says so in one
line on stderr, with no traceback; and a reply that comes after the device re-opened (from a
verifier that sends no QUEUED) is dropped without a warning.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import subprocess
import sys
import threading
import time

import pytest

from camera_node.session import EdgeRequest, run_edge_session
from conftest import REPO, open_links, reference

pytestmark = pytest.mark.broker
PREFIX = "heavy/v1"
FORWARD_S = 1.2  # each target forward: longer than the devices' timeout
TIMEOUT_S = 1.0
DEVICES = 6
GAMMA = 2
NEW_TOKENS = 4
PROMPTS = ["a red circle moves", "hello world", "the camera sees", "two objects", "a person walks", "the car"]


class SlowVerifier:
    """An in-process verifier on its own thread and event loop, serving a target whose
    forwards each sleep `forward_s` (the sleep, like a real forward, lets other threads run),
    or only its `slow_forward`-th. `stop_after` forwards (if given) it stops: its goodbye says
    it is offline."""

    def __init__(self, broker_url: str, target_dir, verifier_id: str, forward_s: float,
                 stop_after: int | None = None, slow_forward: int | None = None):
        from speculative.models import load_lm

        self.slow_forward = slow_forward  # only this forward (1-based) is slow; None: all
        self.lm = load_lm(target_dir)
        self.forwards = 0
        self.lm.model.register_forward_pre_hook(self._slow)
        self.broker_url, self.verifier_id = broker_url, verifier_id
        self.forward_s, self.stop_after = forward_s, stop_after
        self.ready = threading.Event()
        self.core = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"verifier-{verifier_id}", daemon=True)

    def _slow(self, module, args) -> None:
        self.forwards += 1
        time.sleep(self.forward_s if self.slow_forward in (None, self.forwards) else 0.0)
        if self.stop_after is not None and self.forwards >= self.stop_after:
            self.stop()

    def _run(self) -> None:
        from edgespec.identity import resolve_verifier_crypto
        from schemas import Topics
        from verifier_node import service
        from verifier_node.core import VerifierConfig, VerifierCore

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            crypto = resolve_verifier_crypto(argparse.Namespace(home=None, allow_plaintext=False))
            self.core = VerifierCore(self.lm, VerifierConfig(verifier_id=self.verifier_id), Topics(PREFIX), crypto)
            ready = asyncio.Event()
            serving = asyncio.create_task(service.serve(self.core, self.broker_url, ready=ready, stop=self._stop))
            await asyncio.wait([serving, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
            self.ready.set()
            await serving

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.ready.set()

    def __enter__(self) -> SlowVerifier:
        self._thread.start()
        assert self.ready.wait(30) and self.error is None, self.error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    def __exit__(self, *exc) -> None:
        self.stop()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the verifier did not stop"


@pytest.fixture
def loop_errors():
    """Errors reported to asyncio's exception handler (an exception nobody retrieved) and
    warnings logged by the project, while the test runs."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    logging.getLogger().addHandler(handler)
    yield records
    logging.getLogger().removeHandler(handler)


def test_six_devices_wait_out_forwards_longer_than_their_timeout(mosquitto, tiny_pair, loaded_pair, loop_errors):
    target, draft = loaded_pair
    prompts = [target.encode(p) for p in PROMPTS[:DEVICES]]
    expected = [reference(target, ids, NEW_TOKENS) for ids in prompts]

    async def sessions():
        links = await open_links(mosquitto.url, "heavy-dev", PREFIX, DEVICES, timeout_s=TIMEOUT_S)
        try:
            return await asyncio.gather(*(
                run_edge_session(link, draft, EdgeRequest(ids, None, gamma=GAMMA, max_new_tokens=NEW_TOKENS))
                for link, ids in zip(links, prompts)))
        finally:
            for link in links:
                await link.__aexit__(None, None, None)

    with SlowVerifier(mosquitto.url, tiny_pair[0], "heavy-v", FORWARD_S) as verifier:
        started = time.monotonic()
        outcomes = asyncio.run(asyncio.wait_for(sessions(), 120))
        seconds = time.monotonic() - started
        stats = dict(verifier.core.stats)
    gc.collect()  # a future whose exception nobody took reports it when it is collected
    assert [o.result.token_ids for o in outcomes] == expected
    assert [o.resyncs for o in outcomes] == [0] * DEVICES, "a device re-opened its session"
    assert stats["queued_notices"] > 0 and verifier.forwards * FORWARD_S > 2 * TIMEOUT_S
    assert not [r.getMessage() for r in loop_errors], "warnings or errors were logged"
    print(f"\n{DEVICES} sessions in {seconds:.1f} s, {verifier.forwards} forwards of {FORWARD_S} s, "
          f"{stats['queued_notices']} QUEUED notices")


def test_a_device_that_gives_up_says_so_in_one_line(mosquitto, tiny_pair):
    """The verifier answers the OPEN, then leaves for good: the device re-opens on the pool,
    nobody answers, and `edgespec generate` ends with one line on stderr."""
    _, draft_dir = tiny_pair
    with SlowVerifier(mosquitto.url, tiny_pair[0], "heavy-gone", 0.0, stop_after=1):
        proc = subprocess.run(
            [sys.executable, "-m", "edgespec.cli", "generate", "--broker", mosquitto.url, "--prefix", PREFIX,
             "--device-id", "heavy-gives-up", "--draft-model", str(draft_dir), "--prompt", "the camera sees",
             "--raw-prompt", "--timeout", str(TIMEOUT_S), "--gamma", "1", "--max-new-tokens", "40",
             "--threads", "1"], check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("edgespec: error: "), proc.stderr
    assert "re-open" in lines[0], lines[0]  # what the device tried is in the line
    print(f"\n{lines[0]}")


def test_a_late_reply_after_a_reopen_is_dropped_quietly(mosquitto, tiny_pair, loaded_pair, loop_errors, monkeypatch):
    """A verifier that sends no QUEUED (an older one) and a block's forward longer than the
    device's timeout: the device re-opens; the late verdict, sealed for the session as it was
    before, is dropped without an authentication warning, and the output stays exact."""
    from verifier_node import queue_notices

    monkeypatch.setattr(queue_notices, "NOTICE_AFTER_S", float("inf"))
    target, draft = loaded_pair
    ids = target.encode(PROMPTS[0])
    timeout_s = 2.0

    async def session():
        [link] = await open_links(mosquitto.url, "heavy-late", PREFIX, 1, timeout_s=timeout_s)
        try:
            return await run_edge_session(link, draft, EdgeRequest(ids, None, gamma=GAMMA, max_new_tokens=8))
        finally:
            await link.__aexit__(None, None, None)

    with SlowVerifier(mosquitto.url, tiny_pair[0], "heavy-old", timeout_s + 1.0, slow_forward=2):
        outcome = asyncio.run(asyncio.wait_for(session(), 60))
    gc.collect()
    assert outcome.result.token_ids == reference(target, ids, 8)
    assert outcome.resyncs == 1
    warnings = [r.getMessage() for r in loop_errors]
    assert len(warnings) == 1 and "re-opening the session" in warnings[0], warnings


def test_a_failure_after_reopens_tells_them_in_its_message() -> None:
    from camera_node.errors import VerifierLost, VerifierTimeout
    from camera_node.machine import DeviceSession, Fail, Lost, Opened, OpenSent, Reopen
    from transport.retry import RetryPolicy

    session = DeviceSession(RetryPolicy(attempts=3))
    session.step(OpenSent(carries_block=True))
    session.step(Opened("v1"))
    assert isinstance(session.step(Lost(VerifierLost("verifier v1 went offline"))), Reopen)
    assert isinstance(session.step(Lost(VerifierTimeout("no verifier answered the session open"))), Reopen)
    error = VerifierTimeout("no verifier answered the session open")
    action = session.step(Lost(error))
    assert isinstance(action, Fail) and action.error is error
    assert str(error) == ("no verifier answered the session open; the session was re-opened 2 times "
                          "(first because verifier v1 went offline)")
