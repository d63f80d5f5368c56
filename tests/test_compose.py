"""compose.yaml captions: `docker-compose config` is clean, and every service's command, run as
local processes the way compose would run it (one home folder per container, the named
volumes as shared folders, a local Mosquitto with the compose config on a free port, the
broker address through EDGESPEC_BROKER), gets a caption onto the result topics. Where a
Docker engine answers, the same stack runs through testcontainers."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from proctree import Command, subscriber

from broker.runner import MosquittoBroker, free_port
from transport.lifecycle import stop_children

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.yaml"
RESULTS = "edgespec/v1/dev/+/result"


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if not found:
        pytest.skip("docker-compose is not installed (Debian: apt install --no-install-recommends docker-compose)")
    return found


def test_compose_config_is_clean():
    out = subprocess.run([docker_compose(), "-f", str(COMPOSE), "config"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr  # no warnings either
    services = yaml.safe_load(out.stdout)["services"]
    assert services["verifier-gpu"]["profiles"] == ["gpu"]
    assert "profiles" not in services["verifier"]
    for name, svc in services.items():  # every service of ours can be built, not only pulled
        assert "build" in svc or svc["image"].startswith("eclipse-mosquitto:"), name


# ------------------------------------------------------------------ compose as local processes


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, $VAR; $$ is a literal $."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1) or m.group(3), m.group(2)
        got = env.get(name)
        return got if got else (default or "")
    return re.sub(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", sub, value)


def resolve(obj, env):
    if isinstance(obj, str):
        return interpolate(obj, env)
    if isinstance(obj, list):
        return [resolve(x, env) for x in obj]
    if isinstance(obj, dict):
        return {k: resolve(v, env) for k, v in obj.items()}
    return obj


def image_entrypoint() -> list[str]:
    line = next(x for x in (REPO / "Dockerfile").read_text().splitlines() if x.startswith("ENTRYPOINT"))
    return json.loads(line.split(None, 1)[1])


class Stack:
    """compose.yaml's services as local processes under `root`."""

    def __init__(self, root: Path, mosquitto_store: Path):
        self.root = root
        self.spec = resolve(yaml.safe_load(COMPOSE.read_text()), {})
        self.volumes = {name: root / "volumes" / name for name in self.spec.get("volumes", {})}
        for folder in self.volumes.values():
            folder.mkdir(parents=True)
        self.volumes["mosquitto-data"] = mosquitto_store  # Mosquitto (user `mosquitto` as root) must write it
        self.procs: list = []
        self.commands: list[Command] = []
        self.broker: MosquittoBroker | None = None
        self.rewrites: dict[str, str] = {}

    def service(self, name: str) -> dict:
        return self.spec["services"][name]

    def mounts(self, svc: dict) -> dict[str, Path]:
        """container path -> local path, named volumes as folders, bind mounts as they are."""
        out = {}
        for entry in svc.get("volumes", []):
            src, dst = entry.split(":")[:2]
            out[dst] = self.volumes[src] if src in self.volumes else (REPO / src).resolve()
        return out

    def local(self, text: str, mounts: dict[str, Path]) -> str:
        for dst in sorted(mounts, key=len, reverse=True):
            text = text.replace(dst, str(mounts[dst]))
        for old, new in self.rewrites.items():
            text = text.replace(old, new)
        return text

    def start_broker(self) -> MosquittoBroker:
        svc = self.service("mosquitto")
        mounts = self.mounts(svc)
        conf_in = mounts[svc["command"][svc["command"].index("-c") + 1]]
        text = conf_in.read_text().replace(" 0.0.0.0", " 127.0.0.1")
        text = re.sub(r"(?m)^persistence_location .*$",
                      f"persistence_location {self.volumes['mosquitto-data']}/", text)
        conf = self.root / "mosquitto.conf"
        conf.write_text(text)
        self.broker = MosquittoBroker(port=0, config=conf).start()
        # Other containers reach it as mosquitto:1883 (and 9001 for websockets)
        self.rewrites["mosquitto:1883"] = f"127.0.0.1:{self.broker.port}"
        return self.broker

    def argv_env(self, name: str, container: str, svc: dict) -> tuple[list[str], dict[str, str]]:
        mounts = self.mounts(svc)
        entry = svc.get("entrypoint", image_entrypoint())
        argv = [self.local(a, mounts) for a in [*entry, *svc.get("command", [])]]
        home = self.root / "containers" / container
        home.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESPEC_")}
        env.update({k: self.local(str(v), mounts) for k, v in svc.get("environment", {}).items()})
        # `edgespec` and `python` are this checkout's (the image's /app), through the venv's scripts
        env.update(HOME=str(home), HOSTNAME=container, EDGESPEC_THREADS="1", PYTHONPATH=str(REPO),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        return argv, env

    def run_once(self, name: str, container: str) -> subprocess.CompletedProcess:
        argv, env = self.argv_env(name, container, self.service(name))
        return subprocess.run(argv, env=env, cwd=self.root, capture_output=True, text=True, timeout=120, check=False)

    def start(self, name: str, container: str, args_map: dict[str, str] | None = None) -> Command:
        argv, env = self.argv_env(name, container, self.service(name))
        argv = [(args_map or {}).get(a, a) for a in argv]
        if argv[0] == "edgespec":  # the image's entrypoint: this checkout's command line
            argv = [sys.executable, "-m", "edgespec.cli", *argv[1:]]
        cmd = Command([], self.root / "containers" / container / "tmp", argv=argv, base_env=env)
        self.commands.append(cmd)
        self.procs.append(cmd.proc)
        return cmd

    def healthcheck(self, name: str, container: str, args_map: dict[str, str] | None = None):
        test = self.service(name)["healthcheck"]["test"]
        assert test[0] == "CMD", test
        argv, env = self.argv_env(name, container + "-health", {**self.service(name), "entrypoint": [],
                                                                 "command": test[1:]})
        argv = [(args_map or {}).get(a, a) for a in argv]
        if shutil.which(argv[0], path=env["PATH"]) is None:
            return None
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)

    def close(self) -> None:
        stop_children(self.procs)
        if self.broker is not None:
            self.broker.stop()


@pytest.fixture
def stack(tmp_path, mosquitto_store):
    s = Stack(tmp_path, mosquitto_store)
    yield s
    s.close()


def test_compose_services_caption_as_local_processes(stack):
    spec = stack.spec["services"]
    cameras = spec["camera"].get("scale", 1)  # `docker compose up` starts this many
    assert cameras == 3
    assert spec["camera"]["depends_on"]["verifier"]["condition"] == "service_healthy"
    assert spec["verifier"]["depends_on"]["provision"]["condition"] == "service_completed_successfully"
    assert spec["verifier"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"

    broker = stack.start_broker()
    health = stack.healthcheck("mosquitto", "mosquitto-1", {"1883": str(broker.port)})
    assert health is None or health.returncode == 0, health.stderr  # mosquitto_sub gets $SYS/broker/uptime

    for attempt in (1, 2):  # one-shot, and again on the next `up`: keys kept
        done = stack.run_once("provision", f"provision-{attempt}")
        assert done.returncode == 0, done.stdout + done.stderr
    ring = stack.volumes["fleet"] / "verifier"
    assert ring.is_dir() and any(ring.iterdir())

    with subscriber(broker.url, RESULTS) as results:
        verifier = stack.start("verifier", "verifier-1")
        verifier.wait_for("ready on", 90)
        health = stack.healthcheck("verifier", "verifier-1")
        assert health is not None and health.returncode == 0, health.stdout + health.stderr

        cams = [stack.start("camera", f"c0ffee00000{i}") for i in range(1, cameras + 1)]
        web_port = str(free_port())
        web = stack.start("dashboard", "dashboard-1", {"8080": web_port})

        try:
            topic, payload = results.get(timeout=180)
        except queue.Empty:
            pytest.fail("no caption within 180 s:\n" + "\n".join(c.output[-3000:] for c in stack.commands))
        caption = json.loads(payload)
        assert re.fullmatch(r"edgespec/v1/dev/cam-c0ffee00000\d/result", topic), topic
        assert caption["text"] and caption["device_id"] == topic.split("/")[3]

        web.wait_for("dashboard on http://", 60)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as page:
            assert page.status == 200
    for cmd in [verifier, *cams, web]:
        assert "Traceback" not in cmd.output, cmd.output
    # each camera registered itself in the shared fleet volume, nowhere else
    registered = {p.stem for p in (stack.volumes["fleet"] / "devices").glob("*.pub")}
    assert {f"cam-c0ffee00000{i}" for i in range(1, cameras + 1)} <= registered


def test_compose_through_testcontainers():
    """The real stack, where a Docker engine answers."""
    try:
        ok = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("no Docker engine answers `docker info` here; the local-process variant covers the stack")
    compose_mod = pytest.importorskip("testcontainers.compose", reason="testcontainers is not installed")
    with compose_mod.DockerCompose(str(REPO), compose_file_name="compose.yaml", build=True,
                                   services=["mosquitto", "provision", "verifier", "camera"]) as stack:
        with subscriber("mqtt://127.0.0.1:1883", RESULTS, timeout_s=120) as results:
            topic, payload = results.get(timeout=600)
        assert json.loads(payload)["text"], (topic, stack.get_logs())
