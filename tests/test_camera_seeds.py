"""Caption seeds: without `--seed` every camera, event and start gets its
own sampling seed; an explicit seed keeps runs reproducible."""

from __future__ import annotations

import asyncio
import contextlib

from camera_node import node
from camera_node.node import CameraConfig, CameraRun, run_camera


class _NoLink:
    """Stands in for the MQTT link: the seeds are chosen before anything is sent."""

    connected = False  # nothing to publish or verify

    def __init__(self, broker, device_id, **_):
        self.device_id = device_id

    def verifiers_online(self):
        return []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


def caption_seeds(monkeypatch, device_id: str, seed: int | None, events: int = 2) -> list[int]:
    """The seeds a camera on the synthetic source gives its first `events` caption sessions."""
    seeds: list[int] = []

    async def describe(link, lm, extractor, event, cfg, seed, facts=None, modes=None):
        seeds.append(seed)
        return object()  # a caption

    monkeypatch.setattr(node, "EdgeLink", _NoLink)
    monkeypatch.setattr(node, "describe_event", describe)
    kwargs = {} if seed is None else {"seed": seed}
    cfg = CameraConfig(device_id=device_id, source="synthetic:3", max_events=events, **kwargs)
    asyncio.run(run_camera(cfg, lm=None, run=CameraRun()))
    assert len(seeds) == events
    return seeds


def test_cameras_events_and_restarts_never_share_seeds(monkeypatch):
    """Two cameras on the same scene, one of them started twice: six captions, six seeds
    (it was 0, 1 for every camera and every start)."""
    a = caption_seeds(monkeypatch, "cam-a", None)
    b = caption_seeds(monkeypatch, "cam-b", None)
    a_again = caption_seeds(monkeypatch, "cam-a", None)
    seeds = a + b + a_again
    assert len(set(seeds)) == len(seeds), seeds
    assert all(0 <= s < 2**64 for s in seeds)


def test_explicit_seed_is_reproducible(monkeypatch):
    assert caption_seeds(monkeypatch, "cam-a", 7) == caption_seeds(monkeypatch, "cam-b", 7) == [7, 8]


def test_caption_seed_depends_on_device_event_and_start():
    from camera_node.node import caption_seed

    nonce = bytes(16)
    base = caption_seed("cam-1", nonce, 1, 2.5)
    assert base == caption_seed("cam-1", nonce, 1, 2.5)
    others = {caption_seed("cam-2", nonce, 1, 2.5), caption_seed("cam-1", bytes([1]) * 16, 1, 2.5),
              caption_seed("cam-1", nonce, 2, 2.5), caption_seed("cam-1", nonce, 1, 2.75)}
    assert base not in others and len(others) == 4


def test_cli_seed_defaults_to_none():
    """`edgespec camera` and `generate` pass no seed unless one is given."""
    from edgespec.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["camera", "--device-id", "cam-1"])
    assert args.seed is None
    assert parser.parse_args(["camera", "--device-id", "cam-1", "--seed", "5"]).seed == 5
    with contextlib.suppress(SystemExit):
        assert parser.parse_args(["generate", "--prompt", "hi"]).seed is None
