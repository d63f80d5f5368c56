"""End to end through a real Mosquitto: a verifier process, edge sessions, the `generate` command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from camera_node.link import EdgeLink
from camera_node.session import EdgeRequest, run_edge_session
from conftest import REPO, dev_keys, reference
from transport.client import make_client
from schemas import DraftMsg, Opened, SessionOpen, Topics, VerdictMsg, decode, encode
from security.channel import device_open
from speculative.sampling import SamplingParams

pytestmark = pytest.mark.broker
PROMPTS = ["a red circle moves", "hello world", "the camera sees"]




async def edge(url, draft, prompt_ids, gamma, n, device="cam-1", sampling=SamplingParams()):
    async with EdgeLink(url, device, keys=dev_keys(device)) as link:
        return await run_edge_session(link, draft, EdgeRequest(prompt_ids, None, sampling, gamma, n))


@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_greedy_through_broker_equals_target_alone(mosquitto, verifier, loaded_pair, gamma):
    target, draft = loaded_pair
    for prompt in PROMPTS:
        ids = target.encode(prompt)
        out = asyncio.run(edge(mosquitto.url, draft, ids, gamma, 24))
        assert out.result.token_ids == reference(target, ids, 24), prompt
        assert out.verifier_id == "verifier-1" and out.traffic.up > 0 and out.traffic.down > 0


def test_many_sessions_at_once(mosquitto, verifier, loaded_pair):
    target, draft = loaded_pair

    async def all_sessions():
        jobs = [edge(mosquitto.url, draft, target.encode(PROMPTS[i % 3]), 1 + i % 4, 16, device=f"cam-{i}")
                for i in range(8)]
        return await asyncio.gather(*jobs)

    outs = asyncio.run(all_sessions())
    for i, out in enumerate(outs):
        assert out.result.token_ids == reference(target, target.encode(PROMPTS[i % 3]), 16)


def test_sampled_session_through_broker(mosquitto, verifier, loaded_pair):
    target, draft = loaded_pair
    out = asyncio.run(edge(mosquitto.url, draft, target.encode("hello"), 4, 20,
                           sampling=SamplingParams(temperature=0.9, top_k=20)))
    assert 1 <= len(out.result.token_ids) <= 20


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgespec.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)


def test_generate_command_json(mosquitto, verifier, tiny_pair, loaded_pair):
    target, _ = loaded_pair
    proc = run_cli("generate", "--broker", mosquitto.url, "--draft-model", str(tiny_pair[1]),
                   "--prompt", "a red circle moves", "--max-new-tokens", "20", "--gamma", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("text", "token_ids", "rounds", "accepted_per_round", "acceptance_rate", "target_forwards",
                "wire_bytes_up", "wire_bytes_down", "seconds"):
        assert key in out
    assert out["token_ids"] == reference(target, target.encode("a red circle moves"), 20)
    assert out["text"] == target.decode(out["token_ids"])


def test_mismatched_tokenizer_is_a_clear_error(mosquitto, verifier, foreign_draft):
    proc = run_cli("generate", "--broker", mosquitto.url, "--draft-model", str(foreign_draft),
                   "--prompt", "zebra yak", "--max-new-tokens", "5")
    assert proc.returncode == 2
    assert "tokenizer" in proc.stderr and "Traceback" not in proc.stderr


def test_no_verifier_times_out_with_a_clear_error(mosquitto, tiny_pair):
    proc = run_cli("generate", "--broker", mosquitto.url, "--prefix", "nobody/v1", "--draft-model",
                   str(tiny_pair[1]), "--prompt", "hello", "--timeout", "1")
    assert proc.returncode == 2
    assert "no verifier answered" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_broker_is_a_clear_error(tiny_pair):
    from broker.runner import free_port

    proc = run_cli("generate", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--draft-model",
                   str(tiny_pair[1]), "--prompt", "hello")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_duplicate_publish_gets_the_same_verdict(mosquitto, verifier, loaded_pair):
    """A QoS-1 redelivery (simulated by publishing the same sealed draft twice) is answered
    from the cache with the very same bytes, not verified twice."""
    _, draft = loaded_pair
    topics = Topics()
    keys = dev_keys("cam-dup")

    async def scenario():
        sid = os.urandom(16)
        prompt = draft.encode("hello world")
        open_topic = topics.open("cam-dup")
        cipher, sealed_open = device_open(keys.device_key, keys.verifier_pub, keys.verifier_key_id, "cam-dup", sid,
                                          open_topic, encode(SessionOpen(sid, prompt, tokenizer_fp=draft.fingerprint)))
        async with make_client(mosquitto.url, client_id="dup-test") as client:
            await client.subscribe(topics.down("cam-dup"), qos=1)
            await client.publish(open_topic, encode(sealed_open), qos=1)
            verdicts = []
            async for message in client.messages:
                inner, duplicate = cipher.open(topics.down("cam-dup"), decode(message.payload))
                msg = decode(inner)
                if isinstance(msg, Opened):
                    up = topics.session_up("cam-dup", msg.verifier_id)
                    block = encode(cipher.seal(up, encode(DraftMsg(sid, 0, len(prompt), [5, 6, 7], None))))
                    await client.publish(up, block, qos=1)
                    await client.publish(up, block, qos=1)
                if isinstance(msg, VerdictMsg):
                    verdicts.append((message.payload, duplicate))
                if len(verdicts) == 2:
                    return verdicts

    (first, dup1), (second, dup2) = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert first == second and (dup1, dup2) == (False, True)


def test_plaintext_is_refused_by_default(mosquitto, verifier, tiny_pair):
    proc = run_cli("generate", "--broker", mosquitto.url, "--draft-model", str(tiny_pair[1]),
                   "--prompt", "hello", "--plaintext", "--timeout", "5")
    assert proc.returncode == 2
    assert "only encrypted sessions" in proc.stderr and "Traceback" not in proc.stderr


def test_verifier_availability_is_retained(mosquitto, verifier):
    async def read_status():
        async with make_client(mosquitto.url, client_id="status-reader") as client:
            await client.subscribe(Topics().verifier_status("verifier-1"), qos=1)
            async for message in client.messages:
                return message.payload, message.retain

    payload, retained = asyncio.run(asyncio.wait_for(read_status(), 10))
    assert payload == b"online" and retained
