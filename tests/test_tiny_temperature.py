"""Tiny sampled temperatures: refused with a typed, counted error, and a
batch holding such an OPEN still serves its other sessions."""

from __future__ import annotations

import os

import pytest
import torch

from schemas import ErrorCode, ErrorMsg, Opened, SessionOpen, SparseQWire, Topics, WireError, decode, encode
from schemas.messages import MIN_TEMPERATURE as WIRE_MIN_TEMPERATURE
from speculative.sampling import MIN_TEMPERATURE, SamplingParams, make_generator, sample_weights, warp_probs
from verifier_node.core import VerifierConfig, VerifierCore

T = Topics()
VID = "verifier-1"


def test_bound_is_one_number_on_both_sides():
    assert MIN_TEMPERATURE == WIRE_MIN_TEMPERATURE == 0.01


@pytest.mark.parametrize("temperature", [1e-38, 1e-300, 5e-324, 0.0099])
def test_tiny_temperatures_are_refused(temperature):
    with pytest.raises(ValueError, match=r"0 \(greedy\) or in \[0.01, 100\]"):
        SamplingParams(temperature=temperature).validate()
    payload = encode(SessionOpen(session_id=os.urandom(16), prompt_ids=[1], temperature=temperature))
    with pytest.raises(WireError) as err:
        decode(payload)
    assert err.value.code == ErrorCode.OUT_OF_RANGE and "temperature" in str(err.value)


@pytest.mark.parametrize("temperature", [0.0, MIN_TEMPERATURE, 1.0, 100.0])
def test_bound_and_greedy_are_accepted(temperature):
    SamplingParams(temperature=temperature).validate()
    msg = SessionOpen(session_id=os.urandom(16), prompt_ids=[1], temperature=temperature)
    assert decode(encode(msg)).temperature == temperature


def test_warp_at_the_bound_stays_finite():
    """The smallest accepted temperature keeps even half precision's largest logits finite."""
    logits = torch.tensor([65504.0, -65504.0, 0.0, 65000.0])
    probs = warp_probs(logits, SamplingParams(temperature=MIN_TEMPERATURE))
    assert torch.isfinite(probs).all() and abs(float(probs.sum()) - 1.0) < 1e-6


def test_a_tiny_temperature_open_does_not_fail_its_batch(loaded_pair):
    """Opens carrying their first block, verified together; one asks for temperature 1e-38.
    It gets out_of_range (counted); the others get their OPENED and verdict as if alone."""
    target, _ = loaded_pair
    core = VerifierCore(target, VerifierConfig(verifier_id=VID))
    prompt = target.encode("a red circle moves")
    vocab = target.vocab_size
    ids = torch.arange(vocab, dtype=torch.int64)
    weights = torch.full((vocab,), 100, dtype=torch.int64)
    gen = make_generator(3, 0)
    messages, sessions = [], []
    for i, temperature in enumerate([0.8, 1.0, 1e-38, 0.7, 1.2]):
        block = [sample_weights(ids, weights, gen) for _ in range(3)]
        q = SparseQWire.from_arrays(ids.repeat(3, 1).numpy(), weights.repeat(3, 1).numpy())
        msg = SessionOpen(session_id=os.urandom(16), prompt_ids=prompt, temperature=temperature, seed=i, gamma=3,
                          q_top=vocab, max_new_tokens=12, tokenizer_fp=target.fingerprint,
                          first_block=block, first_q=q)
        device = f"cam-{i}"
        messages.append((T.open(device), encode(msg)))
        sessions.append((device, msg))
    replies = core.handle_batch(messages)
    assert len(replies) == len(messages)
    for (topic, payload), (device, msg) in zip(replies, sessions):
        assert topic == T.down(device)
        reply = decode(payload)
        if msg.temperature < MIN_TEMPERATURE:
            assert isinstance(reply, ErrorMsg) and reply.code == ErrorCode.OUT_OF_RANGE, reply
            assert reply.session_id == msg.session_id and "temperature" in reply.message
        else:
            assert isinstance(reply, Opened) and reply.first_verdict is not None, reply
    assert core.rejected["out_of_range"] == 1 and core.rejected["internal"] == 0
    assert core.stats["opened"] == 4 and len(core.sessions) == 4
