"""The device session state machine (camera_node/machine.py), fed events without any I/O, and
its channel's inbox (camera_node/channel.py) with a stand-in link: replies are futures keyed by
(session, sequence), duplicates and stale replies dropped, notices turned into errors."""

from __future__ import annotations

import asyncio

import pytest

from camera_node.channel import OPEN, Downlink, LinkFailed, Reconnected, SessionChannel, VerifierGone
from camera_node.errors import BrokerUnreachable, ResyncFailed, VerifierLost, VerifierRejected, VerifierTimeout
from camera_node.link import device_retry
from camera_node.machine import (
    BlockSent, Closed, DeviceSession, Fail, InvalidTransition, Lost, Opened, OpenSent, Proceed, Reopen, Resynced,
    State, Verdict,
)
from schemas import ErrorMsg, Opened as OpenedMsg, Resync, Topics, VerdictMsg
from schemas.topics import ONLINE
from transport.port import PendingReplies
from transport.retry import RetryPolicy

SID = b"s" * 16


def session(reopens: int = 3) -> DeviceSession:
    return DeviceSession(device_retry(reopens=reopens))


def test_a_session_opens_verifies_and_closes():
    s = session()
    assert s.state is State.IDLE
    assert s.step(OpenSent()) == Proceed() and s.state is State.OPENING
    assert s.step(Opened("v1")) == Proceed() and s.state is State.ACTIVE and s.verifier_id == "v1"
    s.step(BlockSent(0))
    s.step(Verdict(0, done=True))
    assert s.finished and s.resyncs == 0
    s.step(Closed())
    assert s.state is State.CLOSED


def test_a_resync_reopens_until_the_policy_runs_out_within_one_block():
    s = session(reopens=2)
    s.step(OpenSent(carries_block=True))
    s.step(Opened("v1"))
    assert s.step(Resynced("evicted")) == Reopen("evicted") and s.state is State.RESYNCING
    s.step(Opened("v2"))
    s.step(BlockSent(0))  # the same block again: the count goes on
    assert isinstance(s.step(Resynced("evicted")), Reopen)
    s.step(Opened("v2"))
    s.step(BlockSent(0))
    action = s.step(Resynced("evicted"))
    assert isinstance(action, Fail) and isinstance(action.error, ResyncFailed)
    assert "3 times in one round" in str(action.error) and s.resyncs == 2


def test_each_new_block_gets_the_full_count_again():
    s = session(reopens=1)
    s.step(OpenSent())
    s.step(Opened("v1"))
    for seq in range(3):
        s.step(BlockSent(seq))
        assert isinstance(s.step(Resynced("lost")), Reopen)
        s.step(Opened("v1"))
        s.step(BlockSent(seq))
        s.step(Verdict(seq))
    assert s.resyncs == 3


def test_a_plain_timeout_before_any_verifier_answered_fails_at_once():
    s = session()
    s.step(OpenSent())
    timeout = VerifierTimeout("nobody")
    assert s.step(Lost(timeout)) == Fail(timeout)
    s2 = session()
    s2.step(OpenSent())
    gone = VerifierLost("verifier v1 went offline")
    assert isinstance(s2.step(Lost(gone)), Reopen) and s2.resyncs == 1


def test_a_timeout_after_the_open_reopens_then_fails_with_the_timeout():
    s = session(reopens=1)
    s.step(OpenSent())
    s.step(Opened("v1"))
    s.step(BlockSent(0))
    assert isinstance(s.step(Lost(VerifierTimeout("slow"))), Reopen)
    last = VerifierTimeout("still slow")
    assert s.step(Lost(last)) == Fail(last)  # the re-open itself timed out, in RESYNCING


def test_events_out_of_order_are_refused():
    s = session()
    with pytest.raises(InvalidTransition):
        s.step(Verdict(0))
    s.step(OpenSent())
    with pytest.raises(InvalidTransition):
        s.step(OpenSent())


def test_retry_policy_counts_tries_and_time():
    async def main():
        tries = RetryPolicy(attempts=2, backoff=(0.0,)).tries()
        assert not tries.exhausted()
        await tries.wait()
        assert tries.exhausted() and tries.attempt == 1
        timed = RetryPolicy(within_s=0.0).tries()
        await asyncio.sleep(0.01)
        return timed.out_of_time() and not timed.out_of_attempts()

    assert asyncio.run(main())


class _Link:
    """What a SessionChannel uses of its EdgeLink."""

    def __init__(self, timeout_s: float = 1.0):
        self.replies = PendingReplies()
        self.topics = Topics("unit/v1")
        self.device_id = "cam-unit"
        self.downlink_topic = self.topics.down(self.device_id)
        self.timeout_s = timeout_s
        self.gone_grace_s = 0.0
        self.verifier_status: dict[str, bytes] = {}
        self.keys = None
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic, payload):
        self.sent.append((topic, payload))
        return len(payload)

    def release(self, session_id):
        pass


def verdict(seq: int) -> Downlink:
    return Downlink(VerdictMsg(SID, seq, [True], 1, 7, 9), 40)


def test_replies_are_futures_by_session_and_seq_and_stale_ones_are_dropped():
    async def main():
        link = _Link()
        channel = SessionChannel(link, SID)
        channel.verifier_id = "v1"
        channel.deliver(verdict(0))  # stale: block 1 is awaited
        channel.deliver(verdict(1))
        channel.deliver(verdict(1))  # a QoS-1 duplicate, left for nobody
        reply = await channel._verdict(1)
        assert link.replies._waiting == {}  # the future was resolved and forgotten
        waiting = asyncio.ensure_future(channel._verdict(2))
        await asyncio.sleep(0)
        assert (SID, 2) in link.replies._waiting and not channel.has_downlink()
        channel.deliver(verdict(2))
        assert channel.has_downlink()  # the future is done, its task not yet run
        return reply, await waiting, channel.traffic

    reply, second, traffic = asyncio.run(main())
    assert (reply.seq, second.seq) == (1, 2)
    assert traffic.down_messages == 4  # every message read counts, the dropped ones too


def test_notices_become_errors_of_the_awaited_reply():
    async def wait_with(entry, status=None, seq=0):
        link = _Link()
        link.verifier_status.update(status or {})
        channel = SessionChannel(link, SID)
        channel.verifier_id = "v1"
        channel.deliver(entry)
        return await channel._await(seq, "draft seq 0")

    with pytest.raises(VerifierLost, match="re-established"):
        asyncio.run(wait_with(Reconnected()))
    with pytest.raises(BrokerUnreachable):
        asyncio.run(wait_with(LinkFailed(BrokerUnreachable("gone"))))
    with pytest.raises(VerifierLost, match="went offline"):
        asyncio.run(wait_with(VerifierGone("v1")))
    # The verifier holding the session is back within the grace: the wait goes on (and times out).
    with pytest.raises(VerifierTimeout):
        asyncio.run(asyncio.wait_for(wait_with(VerifierGone("v1"), {"v1": ONLINE}), 5))


def test_the_open_takes_an_error_and_with_or_resync_a_resync():
    async def main():
        channel = SessionChannel(_Link(), SID)
        channel.deliver(Downlink(Resync(SID, "evicted"), 30))
        channel.deliver(Downlink(OpenedMsg(SID, "v9", 3), 30))
        opened = await channel.wait_opened()  # the RESYNC does not answer a plain open
        channel.deliver(Downlink(ErrorMsg(SID, None, 3, "no"), 30))
        with pytest.raises(VerifierRejected):
            await channel._verdict(0)
        channel.deliver(Downlink(Resync(SID, "evicted"), 30))
        resync = await channel.wait_opened(or_resync=True)
        return opened, resync, channel

    opened, resync, channel = asyncio.run(main())
    assert opened.verifier_id == "v9" == channel.verifier_id and not channel.open_pending
    assert isinstance(resync, Resync)


def test_nothing_answers_within_the_timeout():
    async def main():
        channel = SessionChannel(_Link(timeout_s=0.05), SID)
        await channel._await(OPEN, "the session open")

    with pytest.raises(VerifierTimeout, match="the session open"):
        asyncio.run(main())
