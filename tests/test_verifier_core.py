"""The verifier's message handling without a network: sessions, duplicates and hostile input."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest
import torch

from schemas import (
    Close, DraftMsg, ErrorCode, ErrorMsg, Features, Opened, Resync, SessionOpen, SparseQWire, Topics,
    VerdictMsg, decode, encode,
)
from conftest import reference
from speculative.draft import Drafter
from speculative.loop import EdgeGeneration, StopRule
from speculative.sampling import SamplingParams
from verifier_node.core import VerifierConfig, VerifierCore
from verifier_node.stream_cost import StreamCost

T = Topics()
VID = "verifier-1"


@pytest.fixture()
def core(loaded_pair):
    return VerifierCore(loaded_pair[0], VerifierConfig(verifier_id=VID))


def open_msg(lm, prompt, **kw):
    kw.setdefault("session_id", os.urandom(16))
    kw.setdefault("tokenizer_fp", lm.fingerprint)
    return SessionOpen(prompt_ids=prompt, **kw)


def reply_of(replies, device="cam-1"):
    assert len(replies) == 1
    topic, payload = replies[0]
    assert topic == T.down(device)
    return decode(payload)


def run_session(core, draft_lm, prompt, gamma, max_new, sampling=SamplingParams(), device="cam-1"):
    """A device loop whose transport is a function call (the broker is tested elsewhere)."""
    msg = open_msg(draft_lm, prompt, gamma=gamma, max_new_tokens=max_new, temperature=sampling.temperature,
                   stop_token_ids=list(draft_lm.eos_token_ids))
    assert isinstance(reply_of(core.handle(T.open(device), encode(msg)), device), Opened)
    drafter = Drafter(draft_lm, sampling)
    drafter.start(prompt)
    edge = EdgeGeneration(drafter, prompt, gamma, StopRule(max_new, draft_lm.eos_token_ids))
    seq = 0
    while not edge.done:
        block = edge.next_block()
        q = None if block.q is None else SparseQWire.from_arrays(block.q.ids.numpy(), block.q.weights.numpy())
        draft = DraftMsg(msg.session_id, seq, edge.committed_len, block.tokens, q)
        verdict = reply_of(core.handle(T.session_up(device, VID), encode(draft)), device)
        assert isinstance(verdict, VerdictMsg), verdict
        edge.apply(verdict.n_accepted, verdict.next_token)
        seq += 1
    return msg.session_id, edge.result


@pytest.mark.parametrize("gamma", [1, 3, 6])
def test_greedy_session_equals_target_generate(core, loaded_pair, gamma):
    target, draft = loaded_pair
    prompt = target.encode("a red circle moves")
    ref = target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24)[0, len(prompt):]
    _, result = run_session(core, draft, prompt, gamma, 24)
    assert result.token_ids == ref.tolist()


def test_sampled_session_completes(core, loaded_pair):
    target, draft = loaded_pair
    _, result = run_session(core, draft, target.encode("hello"), 4, 20, SamplingParams(temperature=0.8))
    assert len(result.token_ids) >= 1 and result.rounds >= 1


def test_duplicate_draft_is_answered_from_cache(core, loaded_pair):
    target, draft = loaded_pair
    prompt = target.encode("the scene")
    msg = open_msg(draft, prompt, max_new_tokens=10)
    core.handle(T.open("cam-1"), encode(msg))
    block = encode(DraftMsg(msg.session_id, 0, len(prompt), [5, 6], None))
    first = core.handle(T.session_up("cam-1", VID), block)
    verified = core.stats["verified_blocks"]
    again = core.handle(T.session_up("cam-1", VID), block)
    assert again == first
    assert core.stats["verified_blocks"] == verified and core.stats["duplicates"] == 1


def test_duplicate_open_does_not_reset_the_session(core, loaded_pair):
    target, draft = loaded_pair
    prompt = target.encode("the scene")
    msg = encode(open_msg(draft, prompt, max_new_tokens=10))
    core.handle(T.open("cam-1"), msg)
    assert isinstance(reply_of(core.handle(T.open("cam-1"), msg)), Opened)
    assert core.stats["opened"] == 1 and core.stats["duplicate_opens"] == 1


def opened_session(core, lm, device="cam-1", **kw):
    msg = open_msg(lm, lm.encode("the scene"), max_new_tokens=10, **kw)
    assert isinstance(reply_of(core.handle(T.open(device), encode(msg)), device), Opened)
    return msg


def test_stale_sequence_rejected(core, loaded_pair):
    msg = opened_session(core, loaded_pair[1])
    n = len(msg.prompt_ids)
    v = reply_of(core.handle(T.session_up("cam-1", VID), encode(DraftMsg(msg.session_id, 5, n, [1], None))))
    err = reply_of(core.handle(T.session_up("cam-1", VID),
                               encode(DraftMsg(msg.session_id, 4, v.committed_len, [1], None))))
    assert isinstance(err, ErrorMsg) and err.code == ErrorCode.BAD_SEQUENCE and err.seq == 4
    assert core.rejected["bad_sequence"] == 1


def test_unknown_session_gets_resync(core):
    r = reply_of(core.handle(T.session_up("cam-1", VID), encode(DraftMsg(os.urandom(16), 0, 3, [1], None))))
    assert isinstance(r, Resync)


def test_wrong_committed_length_gets_resync(core, loaded_pair):
    msg = opened_session(core, loaded_pair[1])
    r = reply_of(core.handle(T.session_up("cam-1", VID), encode(DraftMsg(msg.session_id, 0, 99, [1], None))))
    assert isinstance(r, Resync)


def test_another_devices_session_is_refused(core, loaded_pair):
    msg = opened_session(core, loaded_pair[1], device="cam-a")
    draft = encode(DraftMsg(msg.session_id, 0, len(msg.prompt_ids), [1], None))
    err = reply_of(core.handle(T.session_up("cam-b", VID), draft), "cam-b")
    assert isinstance(err, ErrorMsg) and err.code == ErrorCode.WRONG_DEVICE
    # ... and the owner's session is untouched.
    v = reply_of(core.handle(T.session_up("cam-a", VID), draft), "cam-a")
    assert isinstance(v, VerdictMsg)
    reopen = reply_of(core.handle(T.open("cam-b"), encode(msg)), "cam-b")
    assert isinstance(reopen, ErrorMsg) and reopen.code == ErrorCode.WRONG_DEVICE


def test_tokenizer_mismatch(core, loaded_pair):
    msg = open_msg(loaded_pair[1], [1, 2], tokenizer_fp=b"\x01" * 16)
    err = reply_of(core.handle(T.open("cam-1"), encode(msg)))
    assert err.code == ErrorCode.TOKENIZER_MISMATCH and "share one tokenizer" in err.message


def test_token_outside_vocabulary(core, loaded_pair):
    lm = loaded_pair[1]
    err = reply_of(core.handle(T.open("cam-1"), encode(open_msg(lm, [1, 10_000]))))
    assert err.code == ErrorCode.OUT_OF_RANGE
    msg = opened_session(core, lm)
    draft = DraftMsg(msg.session_id, 0, len(msg.prompt_ids), [10_000], None)
    err = reply_of(core.handle(T.session_up("cam-1", VID), encode(draft)))
    assert err.code == ErrorCode.OUT_OF_RANGE


def test_features_for_a_text_only_target(core, loaded_pair):
    msg = open_msg(loaded_pair[1], [1, 2], features=Features.from_array(np.zeros((2, 4))))
    assert reply_of(core.handle(T.open("cam-1"), encode(msg))).code == ErrorCode.BAD_FEATURES


def test_sampled_draft_without_q(core, loaded_pair):
    msg = opened_session(core, loaded_pair[1], temperature=1.0)
    draft = DraftMsg(msg.session_id, 0, len(msg.prompt_ids), [4, 5], None)
    assert reply_of(core.handle(T.session_up("cam-1", VID), encode(draft))).code == ErrorCode.MALFORMED


def test_q_that_cannot_have_produced_the_token(core, loaded_pair):
    msg = opened_session(core, loaded_pair[1], temperature=1.0)
    q = SparseQWire.from_arrays(np.array([[7]]), np.array([[100]]))
    draft = DraftMsg(msg.session_id, 0, len(msg.prompt_ids), [4], q)
    assert reply_of(core.handle(T.session_up("cam-1", VID), encode(draft))).code == ErrorCode.OUT_OF_RANGE


def test_garbage_is_counted_and_answered(core):
    err = reply_of(core.handle(T.open("cam-1"), b"\xff\x00garbage"))
    assert isinstance(err, ErrorMsg) and err.code == ErrorCode.MALFORMED
    assert core.handle("edgespec/v1/dev/a+b/up/open", b"x") == []  # no safe device to answer
    assert core.handle("elsewhere/topic", b"x") == []
    assert core.rejected["malformed"] == 1 and core.rejected["bad_topic"] == 2


def test_device_may_not_send_verifier_messages(core):
    fake = VerdictMsg(os.urandom(16), 0, [True], 1, 3, 5)
    assert reply_of(core.handle(T.session_up("cam-1", VID), encode(fake))).code == ErrorCode.UNKNOWN_TYPE
    assert reply_of(core.handle(T.open("cam-1"), encode(fake))).code == ErrorCode.UNKNOWN_TYPE


def test_other_verifiers_topic_refused(core, loaded_pair):
    msg = opened_session(core, loaded_pair[1])
    draft = DraftMsg(msg.session_id, 0, len(msg.prompt_ids), [4], None)
    assert reply_of(core.handle(T.session_up("cam-1", "other"), encode(draft))).code == ErrorCode.BAD_TOPIC


def test_close_frees_the_session(core, loaded_pair):
    msg = opened_session(core, loaded_pair[1])
    assert len(core.sessions) == 1
    assert core.handle(T.session_up("cam-1", VID), encode(Close(msg.session_id))) == []
    assert len(core.sessions) == 0


def test_prompt_longer_than_the_target_allows(core, loaded_pair):
    lm = loaded_pair[1]
    err = reply_of(core.handle(T.open("cam-1"), encode(open_msg(lm, [4] * 500, max_new_tokens=100))))
    assert err.code == ErrorCode.OUT_OF_RANGE and "positions" in err.message


def test_random_field_values_never_escape(core, loaded_pair):
    """Structurally valid arrays with random field values: always a typed answer, never a raise."""
    rng = np.random.default_rng(0)
    valid = msgpack.unpackb(encode(open_msg(loaded_pair[1], [1, 2])))
    pool = [None, True, -1, 0, 2**70, 1.5, float("nan"), "x", b"", b"\0" * 16, [], [1, -1], [b"x"], {}]
    for _ in range(500):
        raw = list(valid)
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(2, len(raw)))] = pool[int(rng.integers(len(pool)))]
        try:
            payload = msgpack.packb(raw, use_bin_type=True)
        except (TypeError, OverflowError, ValueError):
            continue
        for topic in (T.open("cam-1"), T.session_up("cam-1", VID)):
            for _, out in core.handle(topic, payload):
                assert isinstance(decode(out), (ErrorMsg, Opened, Resync, VerdictMsg))
    assert core.rejected["internal"] == 0


def test_blocks_arriving_together_are_verified_in_one_batch(core, loaded_pair):
    """Four sessions in lockstep: each round's drafts go to handle_batch together."""
    target, draft = loaded_pair
    prompts = [target.encode(t) for t in ("a red circle", "hello world", "the camera sees one", "two")]
    devices = [f"cam-{i}" for i in range(4)]
    edges, sids = [], []
    for device, prompt in zip(devices, prompts):
        msg = open_msg(draft, prompt, gamma=3, max_new_tokens=20, stop_token_ids=list(draft.eos_token_ids))
        reply_of(core.handle(T.open(device), encode(msg)), device)
        drafter = Drafter(draft, SamplingParams())
        drafter.start(prompt)
        edges.append(EdgeGeneration(drafter, prompt, 3, StopRule(20, draft.eos_token_ids)))
        sids.append(msg.session_id)
    seqs = [0] * 4
    while not all(e.done for e in edges):
        live = [i for i, e in enumerate(edges) if not e.done]
        batch = []
        for i in live:
            block = edges[i].next_block()
            batch.append((T.session_up(devices[i], VID),
                          encode(DraftMsg(sids[i], seqs[i], edges[i].committed_len, block.tokens, None))))
        replies = core.handle_batch(batch)
        assert len(replies) == len(live)
        for i, (topic, payload) in zip(live, replies):
            verdict = decode(payload)
            assert topic == T.down(devices[i]) and isinstance(verdict, VerdictMsg)
            edges[i].apply(verdict.n_accepted, verdict.next_token)
            seqs[i] += 1
    assert max(core.batch_sizes) == 4
    for e, prompt in zip(edges, prompts):
        ref = target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20)[0, len(prompt):]
        assert e.generated == ref.tolist()


def test_block_longer_than_the_sessions_gamma(core, loaded_pair):
    msg = opened_session(core, loaded_pair[1], gamma=2)
    draft = DraftMsg(msg.session_id, 0, len(msg.prompt_ids), [4, 5, 6], None)
    assert reply_of(core.handle(T.session_up("cam-1", VID), encode(draft))).code == ErrorCode.OUT_OF_RANGE


def test_a_failing_model_call_answers_internal_and_drops_only_those_sessions(core, loaded_pair, monkeypatch):
    target, _ = loaded_pair
    prompt = target.encode("a red circle")
    calm = open_msg(target, prompt, max_new_tokens=8)
    assert isinstance(reply_of(core.handle(T.open("cam-2"), encode(calm)), "cam-2"), Opened)

    import verifier_node.core as core_module
    from speculative.target import TargetSession

    def boom(*_a, **_k):
        raise RuntimeError("model failure")

    # An open whose prefill fails: an INTERNAL error naming the session, and the session is gone.
    with monkeypatch.context() as m:
        m.setattr(core_module, "open_batch", boom)
        m.setattr(TargetSession, "open", boom)
        failed = open_msg(target, prompt, max_new_tokens=8)
        err = reply_of(core.handle(T.open("cam-1"), encode(failed)))
    assert isinstance(err, ErrorMsg) and err.code == ErrorCode.INTERNAL and err.session_id == failed.session_id
    assert core.sessions.get(failed.session_id) is None

    # A block whose verification fails: the same, for that block's session only.
    with monkeypatch.context() as m:
        m.setattr(TargetSession, "verify", boom)
        draft = DraftMsg(calm.session_id, 0, len(prompt), [5, 6], None)
        err = reply_of(core.handle(T.session_up("cam-2", VID), encode(draft)), "cam-2")
    assert isinstance(err, ErrorMsg) and err.code == ErrorCode.INTERNAL and err.seq == 0
    assert core.sessions.get(calm.session_id) is None and core.rejected["internal"] == 2


def test_opens_arriving_with_blocks_ride_in_their_forward(core, loaded_pair):
    """Sessions start one round apart: each OPEN comes in the same batch as the others' drafts,
    is prefilled as a row of their forward, and every caption still equals the target's."""
    target, draft = loaded_pair
    prompts = [target.encode(t) for t in ("a red circle", "hello", "the camera sees one", "two")]
    devices = [f"cam-{i}" for i in range(4)]
    edges: list = [None] * 4
    sids, seqs = [os.urandom(16) for _ in devices], [0] * 4
    started = 0
    while started < 4 or not all(e.done for e in edges):
        batch, order = [], []
        for i in range(started):
            if not edges[i].done:
                block = edges[i].next_block()
                batch.append((T.session_up(devices[i], VID),
                              encode(DraftMsg(sids[i], seqs[i], edges[i].committed_len, block.tokens, None))))
                order.append(i)
        if started < 4:
            msg = open_msg(draft, prompts[started], session_id=sids[started], gamma=3, max_new_tokens=16,
                           stop_token_ids=list(draft.eos_token_ids))
            batch.append((T.open(devices[started]), encode(msg)))
            order.append(started)
        replies = core.handle_batch(batch)
        assert [t for t, _ in replies] == [T.down(devices[i]) for i in order]
        for i, (_, payload) in zip(order, replies):
            reply = decode(payload)
            if edges[i] is None:
                assert isinstance(reply, Opened)
                drafter = Drafter(draft, SamplingParams())
                drafter.start(prompts[i])
                edges[i] = EdgeGeneration(drafter, prompts[i], 3, StopRule(16, draft.eos_token_ids))
                started += 1
            else:
                assert isinstance(reply, VerdictMsg)
                edges[i].apply(reply.n_accepted, reply.next_token)
                seqs[i] += 1
    assert core.stats["opens_in_verify_batches"] >= 2  # prompts of one or two tokens ride along
    for e, prompt in zip(edges, prompts):
        assert e.generated == reference(target, prompt, 16)


def q_wire(block):
    return None if block.q is None else SparseQWire.from_arrays(block.q.ids.numpy(), block.q.weights.numpy())


def carrying_open(draft_lm, prompt, gamma, max_new, sampling=SamplingParams(), **kw):
    """A device's OPEN with its first block, and the device state after drafting it."""
    drafter = Drafter(draft_lm, sampling)
    drafter.start(prompt)
    edge = EdgeGeneration(drafter, prompt, gamma, StopRule(max_new, draft_lm.eos_token_ids))
    block = edge.next_block()
    msg = open_msg(draft_lm, prompt, gamma=gamma, max_new_tokens=max_new, temperature=sampling.temperature,
                   stop_token_ids=list(draft_lm.eos_token_ids), first_block=block.tokens, first_q=q_wire(block), **kw)
    return msg, edge


@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.8)])
def test_an_open_carrying_its_first_block_is_answered_with_opened_and_its_verdict(core, loaded_pair, sampling):
    target, draft = loaded_pair
    prompt = target.encode("a red circle moves")
    msg, edge = carrying_open(draft, prompt, 3, 24, sampling)
    replies = core.handle(T.open("cam-1"), encode(msg))
    opened, = [decode(p) for _, p in replies]  # one message: the OPENED holds the block's VERDICT
    verdict = opened.first_verdict
    assert isinstance(opened, Opened) and isinstance(verdict, VerdictMsg) and verdict.seq == 0
    session = core.sessions.get(msg.session_id)
    assert session.target.forwards == 1  # prefill and block in one forward
    # A repeated OPEN (a QoS-1 redelivery, or the device re-sending it) gets both again, unverified.
    assert core.handle(T.open("cam-1"), encode(msg)) == replies
    assert core.stats["verified_blocks"] == 1 and core.stats["duplicate_opens"] == 1
    edge.apply(verdict.n_accepted, verdict.next_token)
    seq = 1
    while not edge.done:
        block = edge.next_block()
        draft_msg = DraftMsg(msg.session_id, seq, edge.committed_len, block.tokens, q_wire(block))
        v = reply_of(core.handle(T.session_up("cam-1", VID), encode(draft_msg)))
        assert isinstance(v, VerdictMsg) and v.seq == seq
        edge.apply(v.n_accepted, v.next_token)
        seq += 1
    if sampling.greedy:
        assert edge.generated == reference(target, prompt, 24)
    assert session.target.forwards == edge.result.rounds
    assert v.done and core.sessions.get(msg.session_id) is None  # the final verdict ended it


def test_a_finished_session_ends_with_its_final_verdict(core, loaded_pair):
    """The VERDICT that says done ends the session on the verifier: its KV slot is free at once
    and no CLOSE is needed. A redelivery of the final DRAFT still gets that VERDICT (not
    verified again); a later DRAFT is refused; a CLOSE that comes anyway is accepted."""
    target, draft = loaded_pair
    prompt = target.encode("a red circle moves")
    msg, edge = carrying_open(draft, prompt, 3, 12)
    opened, = [decode(p) for _, p in core.handle(T.open("cam-1"), encode(msg))]
    verdict = opened.first_verdict
    session = core.sessions.get(msg.session_id)
    edge.apply(verdict.n_accepted, verdict.next_token)
    seq, last = 1, None
    while not edge.done:
        block = edge.next_block()
        last = encode(DraftMsg(msg.session_id, seq, edge.committed_len, block.tokens, None))
        final = core.handle(T.session_up("cam-1", VID), last)
        v = reply_of(final)
        edge.apply(v.n_accepted, v.next_token)
        seq += 1
    assert v.done and last is not None
    assert edge.generated == reference(target, prompt, 12)
    assert core.sessions.get(msg.session_id) is None and core.pool.slot_of(session.target) is None
    assert core.stats["finished"] == 1 and core.stats["closed"] == 0
    verified, forwards = core.stats["verified_blocks"], session.target.forwards
    # The final DRAFT again (QoS 1): the same VERDICT bytes, nothing verified.
    assert core.handle(T.session_up("cam-1", VID), last) == final
    assert core.stats["verified_blocks"] == verified and session.target.forwards == forwards
    assert core.stats["duplicates"] == 1
    # Another device naming the session: refused.
    assert reply_of(core.handle(T.session_up("cam-2", VID), last), "cam-2").code == ErrorCode.WRONG_DEVICE
    # A DRAFT after the end: refused as out of sequence.
    late = DraftMsg(msg.session_id, seq, edge.committed_len, [5], None)
    err = reply_of(core.handle(T.session_up("cam-1", VID), encode(late)))
    assert isinstance(err, ErrorMsg) and err.code == ErrorCode.BAD_SEQUENCE
    # A CLOSE anyway: no answer, and then nothing is kept of the session.
    assert core.handle(T.session_up("cam-1", VID), encode(Close(msg.session_id))) == []
    assert core.finished.get(msg.session_id) is None
    assert isinstance(reply_of(core.handle(T.session_up("cam-1", VID), last)), Resync)


@pytest.mark.parametrize("change, code", [
    (dict(first_block=[10**6]), ErrorCode.OUT_OF_RANGE),  # outside the vocabulary
    (dict(first_block=[1, 2, 3, 4], gamma=2), ErrorCode.OUT_OF_RANGE),  # more drafts than the session's gamma
    (dict(first_block=[1, 2], temperature=0.8), ErrorCode.MALFORMED),  # sampled, without q
])
def test_a_bad_first_block_refuses_the_open(core, loaded_pair, change, code):
    target, draft = loaded_pair
    msg = open_msg(draft, target.encode("the scene"), **change)
    err = reply_of(core.handle(T.open("cam-1"), encode(msg)))
    assert isinstance(err, ErrorMsg) and err.code == code and err.session_id == msg.session_id
    assert core.sessions.get(msg.session_id) is None and core.stats["opened"] == 0


def test_opens_carrying_blocks_batch_with_other_sessions_drafts(core, loaded_pair):
    """Sessions start one round apart, each OPEN carrying its first block, in the same batch as
    the running sessions' drafts. A short prompt's prefill rides in the blocks' forward and its
    block is verified in the next batch's (which the service runs at once); a long prompt's is
    prefilled first and its block verified in this batch. Every caption equals the target's."""
    target, draft = loaded_pair
    texts = ("a red circle", "hello", "the camera sees two objects on the left side", "two")
    prompts = [target.encode(t) for t in texts]
    devices = [f"cam-{i}" for i in range(4)]
    edges: list = [None] * 4
    sids: list = [None] * 4
    seqs, waiting = [0] * 4, [False] * 4
    deferred_seen = same_batch_seen = False
    while edges[-1] is None or not all(e.done for e in edges) or core.has_deferred:
        batch = []
        for i, e in enumerate(edges):
            if e is not None and not e.done and not waiting[i]:
                block = e.next_block()
                batch.append((T.session_up(devices[i], VID),
                              encode(DraftMsg(sids[i], seqs[i], e.committed_len, block.tokens, None))))
                waiting[i] = True
        new = edges.index(None) if None in edges else None
        if new is not None:
            msg, edges[new] = carrying_open(draft, prompts[new], 3, 16)
            sids[new], waiting[new] = msg.session_id, True
            batch.append((T.open(devices[new]), encode(msg)))
        replies = [decode(p) for _, p in core.handle_batch(batch)]
        for reply in replies:
            i = sids.index(reply.session_id)
            if isinstance(reply, Opened):  # with its block's VERDICT: in this batch, or the next
                same_batch = i == new
                same_batch_seen |= same_batch
                deferred_seen |= not same_batch
                reply = reply.first_verdict
            assert isinstance(reply, VerdictMsg) and reply.seq == seqs[i], reply
            edges[i].apply(reply.n_accepted, reply.next_token)
            seqs[i] += 1
            waiting[i] = False
    assert deferred_seen and same_batch_seen and core.stats["opens_in_verify_batches"] >= 1
    for e, prompt in zip(edges, prompts):
        assert e.generated == reference(target, prompt, 16)


def test_an_open_whose_block_fails_in_the_model_gets_one_internal_error(core, loaded_pair, monkeypatch):
    from speculative.target import TargetSession

    target, draft = loaded_pair

    def boom(*_a, **_k):
        raise RuntimeError("model failure")

    monkeypatch.setattr(TargetSession, "open_and_verify", boom)
    msg, _ = carrying_open(draft, target.encode("a red circle"), 3, 8)
    err = reply_of(core.handle(T.open("cam-1"), encode(msg)))  # one reply: the ERROR, no verdict
    assert isinstance(err, ErrorMsg) and err.code == ErrorCode.INTERNAL and err.session_id == msg.session_id
    assert core.sessions.get(msg.session_id) is None


def test_a_deferred_block_whose_session_was_evicted_gets_resync(core, loaded_pair):
    target, draft = loaded_pair
    running = opened_session(core, draft, device="cam-2")
    msg, _ = carrying_open(draft, target.encode("hello"), 3, 8)
    block = DraftMsg(running.session_id, 0, len(running.prompt_ids), [5], None)
    replies = [decode(p) for _, p in core.handle_batch([(T.session_up("cam-2", VID), encode(block)),
                                                         (T.open("cam-1"), encode(msg))])]
    assert [type(r) for r in replies] == [VerdictMsg] and core.has_deferred  # its prefill rode along
    core.sessions.remove(msg.session_id)  # evicted before the next batch
    (topic, payload), = core.handle_batch([])
    assert topic == T.down("cam-1") and isinstance(decode(payload), Resync) and not core.has_deferred


def test_a_held_block_is_not_verified_again_once_its_session_moved_on(core, loaded_pair):
    """A block held for the next batch whose session was verified meanwhile (a duplicate draft
    flushed the batch, then the device's own seq 0 came in it) is dropped, not judged twice."""
    target, draft = loaded_pair
    running = opened_session(core, draft, device="cam-2")
    msg, _ = carrying_open(draft, target.encode("hello"), 3, 8)
    a0 = encode(DraftMsg(running.session_id, 0, len(running.prompt_ids), [5], None))
    b0 = encode(DraftMsg(msg.session_id, 0, len(msg.prompt_ids), msg.first_block, None))
    core.handle_batch([(T.session_up("cam-2", VID), a0), (T.open("cam-1"), encode(msg)),
                       (T.session_up("cam-2", VID), a0), (T.session_up("cam-1", VID), b0)])
    session = core.sessions.get(msg.session_id)
    committed, verified = session.committed_len, core.stats["verified_blocks"]
    assert core.handle_batch([]) == []
    assert session.committed_len == committed and core.stats["verified_blocks"] == verified


def test_a_held_block_of_a_replaced_session_sends_no_resync(loaded_pair):
    """The held block's session was evicted and its id opened again (a QoS-1 redelivery of the
    OPEN): the new session is live, so the old block is dropped without a RESYNC."""
    target, draft = loaded_pair
    core = VerifierCore(target, VerifierConfig(verifier_id=VID, max_sessions_per_device=1))
    running = opened_session(core, draft, device="cam-2")
    msg, _ = carrying_open(draft, target.encode("hello"), 3, 8)
    other, _ = carrying_open(draft, target.encode("two"), 3, 8)
    a0 = encode(DraftMsg(running.session_id, 0, len(running.prompt_ids), [5], None))
    core.handle_batch([(T.session_up("cam-2", VID), a0), (T.open("cam-1"), encode(msg)),
                       (T.session_up("cam-2", VID), a0),
                       (T.open("cam-1"), encode(other)),  # the device's quota evicts msg's session
                       (T.open("cam-1"), encode(msg))])  # and the redelivered OPEN opens it again
    replies = [decode(p) for _, p in core.handle_batch([])]
    assert not any(isinstance(r, Resync) for r in replies)


def test_an_open_whose_block_waits_for_the_next_batch_is_answered_once_with_both(core, loaded_pair):
    """The OPENED of an OPEN whose prefill rode in a batch waits for its block's VERDICT (next
    batch) and goes out with it; a repeated OPEN meanwhile gets nothing (the answer is coming)
    and afterwards that same answer."""
    target, draft = loaded_pair
    running = opened_session(core, draft, device="cam-2")
    msg, _ = carrying_open(draft, target.encode("hello"), 3, 8)
    block = DraftMsg(running.session_id, 0, len(running.prompt_ids), [5], None)
    # The OPEN twice in one batch: the repeat comes after its prefill rode, before its block's turn.
    replies = core.handle_batch([(T.session_up("cam-2", VID), encode(block)), (T.open("cam-1"), encode(msg)),
                                 (T.open("cam-1"), encode(msg))])
    assert [type(decode(p)) for _, p in replies] == [VerdictMsg] and core.has_deferred
    assert core.stats["duplicate_opens"] == 1
    (topic, payload), = core.handle_batch([])
    opened = decode(payload)
    assert topic == T.down("cam-1") and isinstance(opened, Opened) and opened.first_verdict.seq == 0
    assert core.handle(T.open("cam-1"), encode(msg)) == [(topic, payload)]
    assert core.stats["verified_blocks"] == 2  # the running block and the carried one, once each


def test_verdicts_tell_what_a_streamed_token_costs(core, loaded_pair):
    """`stream_us`: after the first no-draft block (one new token, timed) every verdict carries
    it; `time_decode` resets the one-token time it starts from."""
    target = loaded_pair[0]
    prompt = target.encode("a red car")
    msg = open_msg(target, prompt, gamma=2, max_new_tokens=8)
    assert isinstance(reply_of(core.handle(T.open("cam-1"), encode(msg))), Opened)
    first = reply_of(core.handle(T.session_up("cam-1", VID), encode(DraftMsg(msg.session_id, 0, len(prompt), []))))
    assert isinstance(first, VerdictMsg) and first.stream_us is not None and first.stream_us > 0
    core.scheduler.stream = StreamCost()  # nothing timed yet
    timed = core.time_decode()
    assert timed > 0 and core.scheduler.stream.decode_s * 1000 == pytest.approx(timed)
    committed = len(prompt) + 1
    verdict = reply_of(core.handle(T.session_up("cam-1", VID),
                                   encode(DraftMsg(msg.session_id, 1, committed, [first.next_token]))))
    stream = core.scheduler.stream
    assert isinstance(verdict, VerdictMsg) and verdict.stream_us == round(stream.per_token_s() * 1e6)
    assert verdict.stream_us >= round(timed * 1000)  # a forward at least, more while busy
