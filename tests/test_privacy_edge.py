"""Privacy on the edge: prompts sanitised and features noised before anything is sent."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from camera_node import node
from camera_node.privacy import PrivacyConfig, parse_names
from security.privacy import feature_noise_sigma


def test_off_by_default_changes_nothing():
    cfg = PrivacyConfig()
    feats = np.ones((4, 8), np.float32)
    assert cfg.prompt("mail bob@example.com") == "mail bob@example.com"
    assert cfg.features(feats) is feats
    assert cfg.describe() == "off"


def test_prompt_sanitiser():
    cfg = PrivacyConfig(sanitize_prompt=True, names=("Alice",))
    out = cfg.prompt("describe: alice at +44 20 7946 0958, mail alice@example.com")
    assert "alice" not in out.lower() and "7946" not in out and "@" not in out
    assert "[name]" in out and "[phone]" in out and "[email]" in out


def test_feature_noise_has_the_stated_scale():
    cfg = PrivacyConfig(feature_epsilon=1.0, feature_delta=1e-5, feature_clip=1.0)
    feats = np.zeros((4, 32), np.float32)
    noised = cfg.features(feats, np.random.default_rng(0))
    sigma = feature_noise_sigma(feats.shape, 1.0, 1e-5, 1.0)
    assert noised.shape == feats.shape and noised.dtype == np.float32
    assert abs(float(noised.std()) - sigma) / sigma < 0.1
    assert "(1, 1e-05)-DP" in cfg.describe(feats.shape)


def test_parse_names(tmp_path):
    assert parse_names("a, b,,c") == ("a", "b", "c")
    f = tmp_path / "names.txt"
    f.write_text("Alice\n\nBob\n")
    assert parse_names(f"@{f}") == ("Alice", "Bob")


def test_camera_applies_privacy_before_the_session(monkeypatch):
    """What describe_event hands to the session (i.e. what goes on the wire) is the private form."""
    from camera_node.events import detect_events
    from camera_node.scene import random_scene
    from edgespec.defaultpair.data import scene_frames

    sent = {}

    async def fake_session(link, lm, req):
        sent["req"] = req
        raise RuntimeError("stop here")

    class FakeLM:
        def encode(self, text):
            sent["prompt"] = text
            return [1]

    monkeypatch.setattr(node, "run_edge_session", fake_session)
    event = detect_events(scene_frames(random_scene(4)))[0]
    cfg = node.CameraConfig(device_id="cam-p", prompt="describe: carol@example.com",
                            privacy=PrivacyConfig(True, (), 0.5, 1e-5, 2.0))
    clean = node.ObjectFeatures().extract(event)
    with pytest.raises(RuntimeError, match="stop here"):
        asyncio.run(node.describe_event(None, FakeLM(), node.ObjectFeatures(), event, cfg, 0))
    assert "carol" not in sent["prompt"] and "[email]" in sent["prompt"]
    assert not np.allclose(sent["req"].features, clean)


@pytest.mark.broker
def test_generate_sanitises_the_prompt(mosquitto, verifier, tiny_pair):
    from test_e2e_broker import run_cli

    proc = run_cli("generate", "--broker", mosquitto.url, "--draft-model", str(tiny_pair[1]), "--prompt",
                   "hello dave@example.com", "--max-new-tokens", "4", "--sanitize-prompt", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt_sent"] == "hello [email]"
