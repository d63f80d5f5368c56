"""Shared fixtures: a real Mosquitto on a free port, tiny model pairs, a verifier process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker.runner import MosquittoBroker
from tiny_models import make_lm, make_pair, make_tokenizer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def edgespec_home(tmp_path_factory):
    """A private development identity home for the whole run (child processes inherit it)."""
    home = tmp_path_factory.mktemp("edgespec-home")
    old = os.environ.get("EDGESPEC_HOME")
    os.environ["EDGESPEC_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("EDGESPEC_HOME", None)
    else:
        os.environ["EDGESPEC_HOME"] = old


def dev_keys(device_id: str, broker_url: str = "mqtt://127.0.0.1:1883"):
    """The device's development keys (made on first use in EDGESPEC_HOME)."""
    from security.channel import DeviceKeys
    from security.dev_identity import ensure_dev_identity

    bundle, _ = ensure_dev_identity(None, device_id, broker_url=broker_url)
    return DeviceKeys.from_bundle(bundle)


def reference(target, prompt_ids: list[int], n: int) -> list[int]:
    """The target's own greedy continuation (`generate(do_sample=False)`): what every
    speculative session must reproduce token for token."""
    import torch

    out = target.model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=n)
    return out[0, len(prompt_ids):].tolist()


async def open_links(broker_url: str, name: str, prefix: str, n: int, timeout_s: float = 20):
    """`n` encrypted device links `{name}-0` ... under `prefix`, connected."""
    from camera_node.link import EdgeLink
    from schemas import Topics

    links = [EdgeLink(broker_url, f"{name}-{i}", topics=Topics(prefix), keys=dev_keys(f"{name}-{i}"),
                      timeout_s=timeout_s) for i in range(n)]
    for link in links:
        await link.__aenter__()
    return links


@pytest.fixture
def mosquitto_store():
    """A folder for a broker's persistence database. Mosquitto started as root drops to user
    `mosquitto`, which must reach and write the folder (pytest's tmp_path is 0700), so it is a
    world-writable folder of its own, removed afterwards."""
    import shutil
    import tempfile

    store = Path(tempfile.mkdtemp(prefix="edgespec-mqdb-"))
    store.chmod(0o777)
    yield store
    shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="session")
def mosquitto():
    """A Mosquitto process with the project's development config, for the whole test session."""
    with MosquittoBroker(port=0) as broker:
        yield broker


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(target_dir, draft_dir) saved with save_pretrained; reload with from_pretrained."""
    return make_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="session")
def foreign_draft(tmp_path_factory) -> Path:
    """A draft whose tokenizer differs from the tiny pair's."""
    words = ["zebra", "yak", "xylophone", "walrus", "vole", "urchin", "tapir", "seal"]
    return make_lm(tmp_path_factory.mktemp("foreign"), hidden=32, layers=1, seed=5, tokenizer=make_tokenizer(words))


@pytest.fixture(scope="session")
def loaded_pair(tiny_pair):
    from speculative.models import load_lm

    target_dir, draft_dir = tiny_pair
    return load_lm(target_dir), load_lm(draft_dir)


def start_verifier(broker_url: str, target_dir: Path, verifier_id: str = "verifier-1", *extra: str) -> subprocess.Popen:
    """`edgespec verifier` as a child process; returns once it has said it is ready."""
    from edgespec.toolkit import drain

    cmd = [sys.executable, "-m", "edgespec.cli", "verifier", "--broker", broker_url,
           "--target-model", str(target_dir), "--verifier-id", verifier_id, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = read_until_ready(proc)
    if any("ready on" in line for line in lines):
        drain(proc)  # keep draining its output so a chatty verifier never blocks on a full pipe
        return proc
    proc.kill()
    raise RuntimeError("verifier did not start:\n" + "".join(lines))


def read_until_ready(proc: subprocess.Popen, timeout_s: float = 60) -> list[str]:
    """A verifier's output lines up to its "ready on" line (or its end, or the time-out)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "ready on" in line:
            break
    return lines


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def default_pair():
    """The built-in (target, draft) pair, loaded once."""
    from edgespec.config import resolve_model_dir
    from speculative.models import load_lm

    return load_lm(resolve_model_dir("default", "target")), load_lm(resolve_model_dir("default", "draft"))


@pytest.fixture(scope="session")
def verifier(mosquitto, tiny_pair):
    """A verifier process serving the tiny target on the session broker."""
    proc = start_verifier(mosquitto.url, tiny_pair[0])
    yield proc
    stop_process(proc)
