"""The verifier's batch timers, the stats they feed and the bench's per-round breakdown."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from camera_node.link import EdgeLink
from camera_node.session import EdgeRequest, run_edge_session
from conftest import dev_keys, start_verifier, stop_process
from edgespec.bench import ModeResult
from edgespec.bench_rounds import round_costs, stop_for_final_stats
from schemas import SessionOpen, Topics, encode
from verifier_node.core import VerifierConfig, VerifierCore
from verifier_node.service import stats_snapshot
from verifier_node.timing import BatchTimes

T = Topics()


def spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def test_batch_times_split_model_from_the_rest():
    times = BatchTimes()
    with times.batch(1):
        spin(0.002)
        with times.model():
            spin(0.004)
    with times.batch(3):
        with times.model():
            spin(0.001)
        with times.model():  # a batch's model calls add up
            spin(0.001)
    s = times.summary()
    assert s["all"]["batches"] == 2 and s["all"]["messages"] == 4
    single = s["single"]
    assert single["batches"] == 1 and single["messages"] == 1
    assert single["model_ms"]["mean"] >= 4.0 and single["other_ms"]["mean"] >= 2.0
    assert single["total_ms"]["mean"] == pytest.approx(single["model_ms"]["mean"] + single["other_ms"]["mean"],
                                                       abs=1e-3)
    assert 0 < single["model_cpu_ms"]["mean"] <= single["model_ms"]["mean"] + 0.5  # spinning is all CPU
    assert s["all"]["model_ms"]["mean"] >= (4.0 + 2.0) / 2


def test_batch_times_keep_a_bounded_window_and_count_a_failed_batch():
    times = BatchTimes(keep=2)
    assert times.summary() == {"all": {"batches": 0}, "single": {"batches": 0}}
    for _ in range(5):
        with times.batch(2):
            pass
    with pytest.raises(RuntimeError), times.batch(1), times.model():
        raise RuntimeError("model failed")
    s = times.summary()
    assert s["all"]["batches"] == 2 and s["single"]["batches"] == 1


def test_the_core_times_its_batches_and_only_model_calls_count_as_model(loaded_pair):
    target, _ = loaded_pair
    core = VerifierCore(target, VerifierConfig(verifier_id="verifier-1"))
    sid = os.urandom(16)
    prompt = target.encode("hello world")
    core.handle(T.open("cam-1"), encode(SessionOpen(sid, prompt, tokenizer_fp=target.fingerprint, max_new_tokens=8,
                                                    first_block=[4, 5])))
    core.handle(T.session_up("cam-1", "verifier-1"), b"\x93not msgpack")  # rejected before any model work
    s = core.batch_times.summary()
    assert s["single"]["batches"] == 2
    rows = list(core.batch_times._rows)
    assert rows[0][2] > 0 and rows[1][2] == 0.0  # the open's prefill and verify; nothing for the bad bytes
    snapshot = json.loads(json.dumps(stats_snapshot(core)))
    assert snapshot["batch_times"]["single"]["batches"] == 2


def _mode(seconds: float, rounds: int, target_seconds: float = 0.0, full_rounds: int = 0) -> ModeResult:
    return ModeResult("x", seconds=seconds, rounds=rounds, target_seconds=target_seconds, full_rounds=full_rounds)


def test_round_costs_arithmetic():
    stats = {"batch_times": {"single": {"batches": 10, "model_ms": {"mean": 2.5, "p50": 2.4},
                                        "model_cpu_ms": {"mean": 2.5, "p50": 2.4},
                                        "other_ms": {"mean": 0.3, "p50": 0.2}}}}
    b = _mode(seconds=0.030, rounds=10, target_seconds=0.020)  # 3 ms a round, 2 of them in the target
    d = _mode(seconds=0.050, rounds=10, full_rounds=5)  # 5 ms a round; half the rounds accept every draft
    rc = round_costs(b, d, stats, null_mean_ms=0.5)
    assert rc["b_round_ms"] == pytest.approx(3.0) and rc["d_round_ms"] == pytest.approx(5.0)
    assert rc["forward_in_process_ms"] == pytest.approx(2.0) and rc["forward_in_verifier_ms"] == 2.5
    assert rc["draft_ahead_can_hide_ms"] == pytest.approx(0.5)  # half of the 1 ms that is not the target's
    assert rc["ceiling"]["transport"] == pytest.approx(3.0 / (3.0 + 0.5 - 0.5))
    assert rc["ceiling"]["with_forward"] == pytest.approx(3.0 / (3.0 + 0.5 + 0.5 - 0.5))
    assert round_costs(b, d, None, 0.5) is None
    assert round_costs(b, d, {"batch_times": {"single": {"batches": 0}}}, 0.5) is None
    assert round_costs(b, _mode(0.0, 0), stats, 0.5) is None


@pytest.mark.broker
def test_a_stopped_verifier_publishes_its_batch_times(mosquitto, tiny_pair, loaded_pair):
    target, draft = loaded_pair
    prefix = "times/v1"
    proc = start_verifier(mosquitto.url, tiny_pair[0], "verifier-times", "--prefix", prefix)
    try:
        async def one_session():
            async with EdgeLink(mosquitto.url, "cam-times", topics=Topics(prefix), keys=dev_keys("cam-times")) as link:
                return await run_edge_session(link, draft, EdgeRequest(target.encode("hello world"), None, gamma=3,
                                                                       max_new_tokens=12))

        out = asyncio.run(one_session())
        stats = asyncio.run(stop_for_final_stats(mosquitto.url, Topics(prefix).verifier_stats("verifier-times"), proc))
    finally:
        stop_process(proc)
    assert stats is not None and stats["final"] and stats["verifier_id"] == "verifier-times"
    single = stats["batch_times"]["single"]
    assert single["batches"] == out.result.rounds  # one message a round: the OPEN carried the first block
    assert single["model_ms"]["mean"] > 0 and single["other_ms"]["mean"] >= 0
