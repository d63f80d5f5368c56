"""Cloud-only sessions through a real Mosquitto: the verifier generates the continuation
itself and streams it back one token per VERDICT; the device drafts nothing."""

from __future__ import annotations

import asyncio

import pytest

from camera_node.link import EdgeLink
from camera_node.session import EdgeRequest, run_cloud_session, run_edge_session
from conftest import dev_keys, reference
from schemas import SessionOpen, decode, encode

pytestmark = pytest.mark.broker
PROMPTS = ["a red circle moves", "hello world", "the camera sees"]


async def cloud(url, lm, prompt_ids, n, device="cloud-1"):
    async with EdgeLink(url, device, keys=dev_keys(device)) as link:
        return await run_cloud_session(link, lm, EdgeRequest(prompt_ids, None, max_new_tokens=n))


def test_cloud_only_equals_target_alone(mosquitto, verifier, loaded_pair):
    target, draft = loaded_pair
    for prompt in PROMPTS:
        ids = target.encode(prompt)
        out = asyncio.run(cloud(mosquitto.url, draft, ids, 24))
        assert out.result.token_ids == reference(target, ids, 24), prompt
        assert out.result.rounds == len(out.result.token_ids)  # one VERDICT per token
        assert out.result.draft_forwards == 0 and out.extra["mode"] == "cloud_only"


def test_cloud_and_hybrid_sessions_together(mosquitto, verifier, loaded_pair):
    """Streaming sessions share the verifier's batches with drafting ones; all stay exact."""
    target, draft = loaded_pair

    async def both():
        async def hybrid(i):
            async with EdgeLink(mosquitto.url, f"hy-{i}", keys=dev_keys(f"hy-{i}")) as link:
                return await run_edge_session(link, draft, EdgeRequest(target.encode(PROMPTS[i % 3]), None,
                                                                       gamma=3, max_new_tokens=20))
        jobs = [cloud(mosquitto.url, draft, target.encode(PROMPTS[i % 3]), 20, device=f"cl-{i}") for i in range(3)]
        return await asyncio.gather(*jobs, *(hybrid(i) for i in range(3)))

    outs = asyncio.run(both())
    for i, out in enumerate(outs):
        ids = target.encode(PROMPTS[i % 3])
        assert out.result.token_ids == reference(target, ids, 20)


def test_a_streaming_open_must_not_carry_drafts():
    msg = SessionOpen(b"s" * 16, [1, 2], gamma=2, first_block=[3], stream=True)
    again = decode(encode(msg))
    assert again.stream is True
    plain = SessionOpen(b"s" * 16, [1, 2])
    assert decode(encode(plain)).stream is None  # an ordinary OPEN's bytes carry no field for it
    assert len(encode(plain)) < len(encode(msg))


def test_a_streaming_open_with_drafts_is_refused(loaded_pair):
    from schemas import ErrorMsg, Topics
    from verifier_node.core import VerifierConfig, VerifierCore

    target, _ = loaded_pair
    core = VerifierCore(target, VerifierConfig(verifier_id="v-1"), Topics())
    bad = SessionOpen(b"s" * 16, target.encode("hello"), gamma=2, first_block=[3], stream=True,
                      tokenizer_fp=target.fingerprint)
    replies = core.handle(Topics().open("cam-s"), encode(bad))
    assert len(replies) == 1
    err = decode(replies[0][1])
    assert isinstance(err, ErrorMsg) and "streaming OPEN" in err.message
    assert core.rejected  # counted
