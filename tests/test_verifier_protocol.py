"""The verifier's per-session protocol state machine, alone: events in, actions out."""

from __future__ import annotations

from schemas import Close, DraftMsg, ErrorCode, VerdictMsg
from verifier_node.protocol import (Answer, Closed, Desync, Finish, Forget, Ignore, Phase, Refuse, SessionProtocol,
                                    Verify)

SID = bytes(16)


def draft(seq: int, committed: int = 5) -> DraftMsg:
    return DraftMsg(SID, seq, committed, [1, 2], None)


def active(**kw) -> SessionProtocol:
    s = SessionProtocol("cam-1", SID, opened_reply=b"OPENED", **kw)
    assert s.phase is Phase.OPENING and s.opened() == b"OPENED" and s.phase is Phase.ACTIVE
    return s


def code(action) -> ErrorCode:
    assert isinstance(action, Refuse)
    return action.error.code


def test_drafts_in_order_are_verified_and_a_redelivery_answered_from_the_cache():
    s = active()
    assert s.draft("cam-1", draft(0), 5) == Verify(draft(0))
    assert s.verdict(0, b"V0", done=False) is None and s.last_seq == 0
    assert s.draft("cam-1", draft(0), 7) == Answer(b"V0")  # QoS-1 duplicate: never verified twice
    assert s.draft("cam-1", draft(1, 7), 7) == Verify(draft(1, 7))
    assert code(s.draft("cam-1", draft(3, 7), 7)) == ErrorCode.BAD_SEQUENCE
    assert code(s.draft("cam-2", draft(1, 7), 7)) == ErrorCode.WRONG_DEVICE


def test_a_committed_length_mismatch_ends_the_session_with_a_resync():
    s = active()
    action = s.draft("cam-1", draft(0, 4), 5)
    assert isinstance(action, Desync) and "4" in action.reason and s.phase is Phase.ENDED and s.ended


def test_an_open_with_a_block_is_answered_by_its_first_verdict():
    s = SessionProtocol("cam-1", SID)  # the OPEN carried a block: no OPENED before its verdict
    assert s.open_again() == Ignore()
    assert s.opened() is None and s.phase is Phase.OPENING
    assert s.answers_open(0) and not s.answers_open(1)
    s.verdict(0, b"OPENED+V0", done=False)
    assert s.phase is Phase.ACTIVE and s.open_again() == Answer(b"OPENED+V0") and not s.answers_open(0)


def test_the_final_verdict_finishes_the_session_and_late_messages_are_refused():
    s = active()
    assert s.verdict(0, b"V0", done=True) == Finish() and s.phase is Phase.FINISHED and s.ended
    assert s.draft("cam-1", draft(0), None) == Answer(b"V0")  # its last DRAFT again
    assert code(s.draft("cam-1", draft(1), None)) == ErrorCode.BAD_SEQUENCE
    assert code(s.close("cam-2")) == ErrorCode.WRONG_DEVICE
    assert s.close("cam-1") == Forget(SID)


def test_close_ends_a_live_session_only_for_its_own_device():
    s = active()
    assert s.close("cam-2") == Ignore() and s.phase is Phase.ACTIVE
    assert s.close("cam-1") == Closed() and s.phase is Phase.ENDED


def test_sealed_inner_messages_and_duplicate_envelopes():
    s = active()
    assert code(s.sealed("cam-2")) == ErrorCode.WRONG_DEVICE and s.sealed("cam-1") is None
    assert s.inner("cam-1", draft(0), 5) == Verify(draft(0))
    s.verdict(0, b"V0", done=False)
    assert s.inner("cam-1", draft(0), 7, duplicate_of=1) == Answer(b"V0")
    replay = s.inner("cam-1", Close(SID), 7, duplicate_of=2)
    assert code(replay) == ErrorCode.REPLAY and "envelope seq 2" in str(replay.error)
    verdict = VerdictMsg(SID, 0, [True], 1, 3, 6, False)
    assert code(s.inner("cam-1", verdict, 7)) == ErrorCode.UNKNOWN_TYPE
    s.verdict(1, b"V1", done=True)
    # A new envelope after the end: its DRAFT is late (even one repeating the last seq), a CLOSE is taken.
    assert code(s.inner("cam-1", draft(1), None)) == ErrorCode.BAD_SEQUENCE
    assert s.inner("cam-1", Close(SID), None) == Forget(SID)


def test_a_failure_ends_the_session():
    s = active()
    s.failed()
    assert s.phase is Phase.ENDED and s.ended
