"""The system under test and what watches it: the well-behaved devices, the verifier's memory
and stats, and the broker and verifier this command starts."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import Topics

from ..config import REPO
from .campaign import FuzzConfig


@dataclass
class DeviceRecord:
    sessions: int = 0
    exact: int = 0
    mismatched: int = 0
    failed: int = 0
    failed_after_attack: int = 0
    after_attack_ok: int = 0
    tokens: int = 0
    resyncs: int = 0
    errors: list[str] = field(default_factory=list)

    def note(self, error: str) -> None:
        """Keep the first ten errors."""
        if len(self.errors) < 10:
            self.errors.append(error)


async def device_loop(index: int, url: str, dev_id: str, keys: Any, auth: Any, draft: Any, prompts: list[list[int]],
                      refs: list[list[int]], cfg: FuzzConfig, attack_over: asyncio.Event, warm: asyncio.Event,
                      rec: DeviceRecord) -> None:
    from camera_node.link import EdgeLink
    from camera_node.session import EdgeRequest, run_edge_session

    while True:
        try:
            async with EdgeLink(url, dev_id, keys=keys, auth=auth, timeout_s=cfg.device_timeout_s) as link:
                while True:
                    after = attack_over.is_set()
                    k = index % len(prompts)
                    index += 1
                    try:
                        out = await run_edge_session(link, draft, EdgeRequest(prompts[k], None, gamma=cfg.gamma,
                                                                              max_new_tokens=cfg.max_new_tokens))
                    except Exception as exc:  # a lost session is the finding; keep generating
                        rec.failed += 1
                        rec.failed_after_attack += after
                        rec.note(f"{type(exc).__name__}: {exc}"[:300])
                        if after:
                            return
                        continue
                    rec.sessions += 1
                    rec.tokens += len(out.result.token_ids)
                    rec.resyncs += out.resyncs
                    if out.result.token_ids == refs[k]:
                        rec.exact += 1
                    else:
                        rec.mismatched += 1
                        rec.note(f"prompt {k}: got {out.result.token_ids} want {refs[k]}")
                    warm.set()
                    if after:
                        rec.after_attack_ok += 1
                        return
        except Exception as exc:  # the link itself broke: count it and reconnect
            rec.failed += 1
            rec.note(f"link: {type(exc).__name__}: {exc}"[:300])
            if attack_over.is_set():
                rec.failed_after_attack += 1
                return
            await asyncio.sleep(0.2)


def read_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class RssWatch:
    """VmRSS of a process sampled in a thread: before, during and after the attack."""

    def __init__(self, pid: int | None, interval_s: float = 0.1):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []
        self.phase_start: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-watch")

    def _run(self) -> None:
        pid = self.pid
        assert pid is not None  # the thread runs only with a pid (start)
        while not self._stop.is_set():
            kb = read_rss_kb(pid)
            if kb is not None:
                self.samples.append((time.monotonic(), kb))
            self._stop.wait(self.interval_s)

    def start(self) -> RssWatch:
        if self.pid:
            self._thread.start()
        return self

    def mark(self, phase: str) -> None:
        self.phase_start[phase] = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def summary(self) -> dict:
        if not self.samples:
            return {"measured": False}
        t_attack = self.phase_start.get("attack", self.samples[0][0])
        before = [kb for t, kb in self.samples if t <= t_attack] or [self.samples[0][1]]
        later = [kb for t, kb in self.samples if t > t_attack] or [before[-1]]
        mb = 1 / 1024
        return {"measured": True, "before_mb": before[-1] * mb, "max_mb": max(later) * mb,
                "after_mb": later[-1] * mb, "growth_mb": (max(later) - before[-1]) * mb, "samples": len(self.samples)}


class StatsFeed:
    """The verifier's periodic stats messages."""

    def __init__(self) -> None:
        self.latest: tuple[float, dict] | None = None
        self.arrived = asyncio.Event()

    def on_message(self, _topic: str, payload: bytes) -> None:
        try:
            self.latest = (time.monotonic(), json.loads(payload))
        except ValueError:
            return
        self.arrived.set()

    async def next_after(self, t: float, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.latest is not None and self.latest[0] > t:
                return self.latest[1]
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), max(0.05, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        return None


# ---------------------------------------------------------------------- the system under test


class SelfStarted:
    """A broker (production ACL, or the development config) and a verifier process, on loopback."""

    def __init__(self, cfg: FuzzConfig, target_dir: Path, names: list[str], home: Path, work: Path):
        self.cfg, self.target_dir, self.names, self.home, self.work = cfg, target_dir, names, home, work
        self.passwords: dict[str, str] = {}
        self.broker: Any = None
        self.proc: subprocess.Popen | None = None
        self.log: deque[str] = deque(maxlen=400)
        self.tracebacks = 0
        self.queue_drops = 0  # aiomqtt dropped incoming messages (its queue was full)

    @property
    def url(self) -> str:
        return self.broker.url

    def auth(self, user: str):
        from transport.urls import ClientAuth

        return ClientAuth(username=user, password=self.passwords[user]) if self.passwords else ClientAuth()

    def start(self) -> None:
        from broker.runner import MosquittoBroker

        if self.cfg.broker_mode == "acl":
            self.broker = MosquittoBroker(port=0, config=self._acl_config())
        else:
            self.broker = MosquittoBroker(port=0)
        self.broker.start()
        vid = self.cfg.verifier_id
        url = self.url
        if self.passwords:
            url = f"mqtt://{vid}:{self.passwords[vid]}@127.0.0.1:{self.broker.port}"
        cmd = [sys.executable, "-m", "edgespec.cli", "verifier", "--broker", url, "--target-model",
               str(self.target_dir), "--verifier-id", vid, "--home", str(self.home)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "EDGESPEC_HOME": str(self.home),
               "EDGESPEC_THREADS": str(self.cfg.threads)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                     env=env)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                if "Traceback" in line:
                    self.tracebacks += 1
                if "queue is full" in line:
                    self.queue_drops += 1
                if "ready on" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True, name="verifier-log").start()
        if not ready.wait(120) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("the verifier did not start:\n" + "\n".join(self.log))

    def _acl_config(self) -> Path:
        from security.mosquitto_files import (AclPolicy, ensure_password_file, generate_password, render_acl,
                                              set_password)

        p, vid = Topics().prefix, self.cfg.verifier_id
        pw_file, acl_file = self.work / "passwd", self.work / "acl"
        ensure_password_file(pw_file)
        for name in [vid, "fuzz-recorder", "fuzz-operator", *self.names]:
            self.passwords[name] = generate_password(18)
            set_password(pw_file, name, self.passwords[name])
        acl = render_acl(AclPolicy(prefix=p, verifiers=(vid,)))
        status = f"topic write {p}/verifier/{vid}/status\n"
        if status not in acl:
            raise RuntimeError("the production ACL has no verifier status line to extend")
        # The template lets no one publish or read verifier stats (see the report); add it here.
        acl = acl.replace(status, status + f"topic write {p}/verifier/{vid}/stats\n")
        acl += (f"\n# edgespec fuzz: a wiretap on the uplinks and an operator reading stats\n"
                f"user fuzz-recorder\ntopic read {p}/dev/+/up/#\n"
                f"user fuzz-operator\ntopic read {p}/verifier/+/stats\n")
        acl_file.write_text(acl)
        conf = self.work / "mosquitto-acl.conf"
        conf.write_text("\n".join([
            "per_listener_settings false", "listener 1883 127.0.0.1", "allow_anonymous false",
            f"password_file {pw_file}", f"acl_file {acl_file}", "set_tcp_nodelay true",
            "max_packet_size 1048576", "max_inflight_messages 64", "max_queued_messages 10000",
            "persistence false", "log_dest stderr", "log_type error", "connection_messages false",
            f"user {getpass.getuser()}", ""]))  # as root, Mosquitto would drop to a user that cannot read them
        return conf

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.broker is not None:
            self.broker.stop()
