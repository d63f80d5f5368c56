"""Clean lifecycles: `edgespec broker`, `demo`, `verifier` and `camera` run as real processes,
get SIGINT or SIGTERM, and within 2 s leave no process and no temp folder behind.

Each command runs with a private TMPDIR, so every temp folder it makes is counted; its
processes are read from psutil or /proc (by parent pid, all the way down) while it runs."""

from __future__ import annotations

import signal
import time

import pytest
from proctree import Command, alive, command_names, descendants, retained, subscriber

from schemas import Topics
from schemas.topics import ONLINE

STOP_S = 2.0  # the promise: children and temp folders gone within this after the signal
SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


def stop_and_count(cmd: Command, sig: int) -> tuple[float, list[int], list[str]]:
    """Signal the command; (seconds until it exited, pids still running below it, temp folders)."""
    below = descendants(cmd.proc.pid)
    t0 = time.monotonic()
    cmd.proc.send_signal(sig)
    try:
        cmd.proc.wait(timeout=STOP_S + 5)
    except Exception:
        cmd.kill()
        raise
    took = time.monotonic() - t0
    left = alive(below)
    print(f"{cmd.proc.args[3]} after {sig!r}: exited in {took:.2f} s, {len(below)} processes below it, "
          f"{len(left)} left, {len(cmd.temp_folders())} temp folders left")
    if left:
        names = command_names({p for p in below if p[0] in left})
        cmd.kill()
        for pid in left:
            import os

            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"left running after {sig!r}: {names}")
    return took, left, cmd.temp_folders()


def assert_clean(cmd: Command, took: float, left: list[int], folders: list[str]) -> None:
    assert left == []
    assert folders == [], f"temp folders left: {folders}"
    assert took < STOP_S, f"took {took:.2f} s to stop"
    assert "Traceback" not in cmd.output, cmd.output


@pytest.mark.parametrize("sig", SIGNALS)
def test_broker_stops_mosquitto_and_removes_its_folder(tmp_path, sig):
    cmd = Command(["broker", "--port", "0"], tmp_path / "tmp")
    try:
        cmd.wait_for("on mqtt://", 60)
        below = descendants(cmd.proc.pid)
        assert any("mosquitto" in n for n in command_names(below)), command_names(below)
        assert len(cmd.temp_folders()) == 1  # its runtime folder, counted as it runs
        took, left, folders = stop_and_count(cmd, sig)
    finally:
        cmd.kill()
    assert_clean(cmd, took, left, folders)
    assert cmd.proc.returncode == 0


@pytest.mark.parametrize("sig", SIGNALS)
def test_demo_stops_everything_and_prints_a_summary(tmp_path, sig):
    """Signalled while the cameras caption: broker, verifier and three cameras are gone within
    2 s, and the demo says what it saw instead of failures."""
    cmd = Command(["demo", "--events", "3", "--timeout", "120"], tmp_path / "tmp")
    try:
        port = cmd.wait_for("mosquitto_sub -h 127.0.0.1 -p", 60).split("-p")[1].split()[0]
        cmd.wait_for("tokens/round,", 120)  # a first caption: every child is up and working
        below = descendants(cmd.proc.pid)
        names = command_names(below)
        assert sum("edgespec.cli camera" in n for n in names) == 3, names
        assert sum("edgespec.cli verifier" in n for n in names) == 1, names
        assert any("mosquitto" in n for n in names), names
        took, left, folders = stop_and_count(cmd, sig)
    finally:
        cmd.kill()
    assert_clean(cmd, took, left, folders)
    assert cmd.proc.returncode == 128 + sig
    out = cmd.output
    assert int(port) > 0 and f"-p {port} -v -t 'edgespec/v1/dev/+/result'" in out
    for field in ("acceptance", "tokens/round", "JPEG key frames would be", "Ctrl-C"):
        assert field in out.split("broker:")[0], f"the intro does not explain {field!r}"
    assert "stopped: " in out and "of 9 captions, 3 cameras" in out
    assert "failed" not in out and "exited with" not in out


def test_demo_stopped_while_starting(tmp_path):
    """SIGTERM while the verifier is still loading: nothing is left either."""
    cmd = Command(["demo"], tmp_path / "tmp")
    try:
        cmd.wait_for("broker: mosquitto", 60)
        took, left, folders = stop_and_count(cmd, signal.SIGTERM)
    finally:
        cmd.kill()
    assert_clean(cmd, took, left, folders)
    assert "stopped: 0 of 9 captions, 3 cameras" in cmd.output


def test_demo_runs_to_its_summary(tmp_path):
    cmd = Command(["demo", "--events", "1", "--timeout", "120"], tmp_path / "tmp")
    try:
        assert cmd.proc.wait(timeout=180) == 0, cmd.output
    finally:
        cmd.kill()
    assert "done: 3 of 3 captions, 3 cameras (3 captioned), acceptance" in cmd.output, cmd.output
    assert cmd.output.count("KiB sent (JPEG key frames would be") == 3
    assert cmd.temp_folders() == []


@pytest.mark.parametrize("sig", SIGNALS)
def test_verifier_stops(tmp_path, mosquitto, tiny_pair, sig):
    cmd = Command(["verifier", "--broker", mosquitto.url, "--target-model", str(tiny_pair[0]),
                   "--verifier-id", f"lifecycle-{sig}", "--prefix", "lifecycle"], tmp_path / "tmp")
    try:
        cmd.wait_for("ready on", 60)
        took, left, folders = stop_and_count(cmd, sig)
    finally:
        cmd.kill()
    assert_clean(cmd, took, left, folders)


@pytest.mark.parametrize("sig", SIGNALS)
def test_camera_stops_mid_session(tmp_path, mosquitto, sig):
    """The camera has opened a session (a verifier says it is online under this prefix, and
    none answers) when it is told to stop."""
    prefix, device = "lifecycle-cam", f"cam-stop-{int(sig)}"
    silent = retained(mosquitto.url, Topics(prefix).verifier_status("silent-verifier"), ONLINE)
    with silent, subscriber(mosquitto.url, Topics(prefix).open(device)) as opens:
        cmd = Command(["camera", "--broker", mosquitto.url, "--prefix", prefix, "--device-id", device,
                       "--source", "synthetic:7", "--realtime", "--timeout", "60"], tmp_path / "tmp")
        try:
            opens.get(timeout=90)  # its first OPEN: loaded, connected, captioning an event
            took, left, folders = stop_and_count(cmd, sig)
        finally:
            cmd.kill()
    assert_clean(cmd, took, left, folders)
