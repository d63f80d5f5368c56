"""Drafting ahead (pipelining) changes when drafting happens, never what is generated."""

from __future__ import annotations

import pytest

from speculative.draft import Drafter
from speculative.loop import EdgeGeneration, StopRule, run_local
from speculative.sampling import SamplingParams
from speculative.target import TargetSession


def generate_with_ahead(target, draft, prompt, gamma, n, steps, params=SamplingParams(), features=None):
    """The device loop with `steps` draft-ahead forwards while each block is 'in flight'."""
    drafter = Drafter(draft, params)
    drafter.start(prompt, features)
    verifier = TargetSession(target, params)
    verifier.open(prompt, features)
    edge = EdgeGeneration(drafter, prompt, gamma, StopRule(n, target.eos_token_ids))
    while not edge.done:
        block = edge.next_block()
        for _ in range(steps):
            if not edge.draft_ahead_step():
                break
        v = verifier.verify(block.tokens, block.q)
        edge.apply(v.n_accepted, v.next_token)
    return edge.generated, drafter


@pytest.mark.parametrize("steps", [0, 2, 10])
@pytest.mark.parametrize("gamma", [1, 4])
def test_greedy_output_unchanged_by_drafting_ahead(loaded_pair, steps, gamma):
    target, draft = loaded_pair
    for text in ("a red circle", "hello world"):
        prompt = target.encode(text)
        ref = run_local(target, draft, prompt, None, SamplingParams(), gamma, 30).token_ids
        out, _ = generate_with_ahead(target, draft, prompt, gamma, 30, steps)
        assert out == ref


def test_self_draft_hits_every_guess(loaded_pair):
    """A draft identical to the target guesses every bonus token: every block is drafted ahead."""
    target, _ = loaded_pair
    out, drafter = generate_with_ahead(target, target, target.encode("the camera"), 3, 24, steps=10)
    assert drafter.ahead_hits >= 5 and drafter.ahead_misses == 0
    assert out == run_local(target, target, target.encode("the camera"), None, SamplingParams(), 3, 24).token_ids


def test_sampled_session_with_ahead_completes(loaded_pair):
    target, draft = loaded_pair
    out, _ = generate_with_ahead(target, draft, target.encode("hello"), 4, 20, steps=3,
                                 params=SamplingParams(temperature=0.8))
    assert 1 <= len(out) <= 20


def test_a_queued_reply_is_taken_before_the_next_draft_forward():
    """While a verdict waits in the session's inbox, the drafting loop makes no forward: it lets
    the task that takes the verdict run first (a forward would delay the verdict by its length)."""
    import asyncio

    from camera_node.session import exchange_drafting_ahead

    class Channel:
        def __init__(self):
            self.queued = False
            self.delivered = asyncio.Event()

        def has_downlink(self):
            return self.queued

        async def exchange(self, message):
            self.queued = True  # the verdict is in the inbox from the start
            await self.delivered.wait()  # ...and is taken only once this task is let run again
            return "verdict"

    class Edge:
        steps = 0

        def draft_ahead_step(self):
            Edge.steps += 1
            return True

    async def scenario():
        channel = Channel()
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, channel.delivered.set)  # the reply task can finish only after 10 ms
        return await exchange_drafting_ahead(channel, object(), Edge())

    assert asyncio.run(scenario()) == "verdict"
    assert Edge.steps == 0
