"""Wire messages: round trips for every type, and typed rejection of everything off-contract."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    Close, DraftMsg, ErrorCode, ErrorMsg, Features, Opened, Resync, ResultMsg, Sealed, SealedOpen, SessionOpen,
    SparseQWire,
    VerdictMsg, WireError, decode, encode,
)
from schemas.messages import PROTOCOL_VERSION, MsgType

sid = st.binary(min_size=16, max_size=16)
tokens = st.lists(st.integers(0, 50_000), max_size=32)
text = st.text(max_size=100)


@st.composite
def sparse_q(draw, k):
    top = draw(st.integers(1, 8))
    ids = np.array(draw(st.lists(st.integers(0, 2**31), min_size=k * top, max_size=k * top)), dtype=np.int64)
    w = np.array(draw(st.lists(st.integers(1, 65535), min_size=k * top, max_size=k * top)), dtype=np.int64)
    return SparseQWire.from_arrays(ids.reshape(k, top), w.reshape(k, top))


@st.composite
def drafts(draw):
    toks = draw(tokens)
    q = draw(st.none() | sparse_q(len(toks))) if toks else None
    return DraftMsg(draw(sid), draw(st.integers(0, 2**40)), draw(st.integers(1, 6000)), toks, q)


@st.composite
def opens(draw):
    feats = None
    if draw(st.booleans()):
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
        arr = np.array(draw(st.lists(st.floats(-100, 100), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))))
        feats = Features.from_array(arr.reshape(shape))
    first = draw(st.none() | tokens)
    first_q = draw(st.none() | sparse_q(len(first))) if first else None
    return SessionOpen(
        session_id=draw(sid), prompt_ids=draw(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=64)),
        features=feats, temperature=draw(st.just(0.0) | st.floats(0.01, 5)), top_k=draw(st.integers(0, 100)),
        top_p=draw(st.floats(0.01, 1.0)), seed=draw(st.integers(0, 2**64 - 1)), gamma=draw(st.integers(0, 32)),
        q_top=draw(st.integers(1, 64)), max_new_tokens=draw(st.integers(1, 4096)),
        stop_token_ids=draw(st.lists(st.integers(0, 1000), max_size=8)), tokenizer_fp=draw(sid),
        generated_ids=draw(tokens), first_block=first, first_q=first_q,
    )


messages = st.one_of(
    opens(),
    drafts(),
    st.builds(Opened, sid, st.text(min_size=1, max_size=40), st.integers(1, 2**40)),
    st.builds(lambda s, seq, n, k, t, c, d: VerdictMsg(s, seq, [i < min(n, k) for i in range(k)], min(n, k), t, c, d),
              sid, st.integers(0, 2**40), st.integers(0, 32), st.integers(0, 32), st.integers(0, 2**31 - 1),
              st.integers(1, 2**40), st.booleans()),
    st.builds(Resync, sid, text),
    st.builds(Close, sid, text),
    st.builds(ErrorMsg, st.none() | sid, st.none() | st.integers(0, 2**40), st.integers(0, 100), text),
    st.builds(Sealed, sid, st.integers(0, 2**64 - 1), st.binary(max_size=200)),
    st.builds(SealedOpen, sid, st.text("0123456789abcdef", min_size=16, max_size=16),
              st.binary(min_size=32, max_size=32), st.binary(max_size=200)),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(msg):
    assert decode(encode(msg)) == msg


def test_features_round_trip_as_fp16():
    arr = np.linspace(-2, 2, 24, dtype=np.float32).reshape(4, 6)
    f = Features.from_array(arr)
    assert f.dtype == "float16" and len(f.data) == 48
    assert np.allclose(f.to_array(), arr, atol=1e-3)


def test_version_comes_first():
    raw = msgpack.unpackb(encode(Close(b"s" * 16)))
    assert raw[:2] == [PROTOCOL_VERSION, MsgType.CLOSE]


def test_extra_trailing_fields_are_ignored():
    raw = msgpack.unpackb(encode(Close(b"s" * 16)))
    assert decode(msgpack.packb(raw + ["a later field"])) == Close(b"s" * 16)


def draft_raw(**changes):
    raw = msgpack.unpackb(encode(DraftMsg(b"s" * 16, 3, 5, [1, 2], None)))
    fields = {"version": 0, "type": 1, "session_id": 2, "seq": 3, "committed_len": 4, "tokens": 5, "q": 6}
    for name, value in changes.items():
        raw[fields[name]] = value
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"", ErrorCode.MALFORMED),
        (b"\xc1\xc1\xc1", ErrorCode.MALFORMED),
        (msgpack.packb({"v": 1}), ErrorCode.MALFORMED),
        (msgpack.packb([1]), ErrorCode.MALFORMED),
        (msgpack.packb(encode(Close(b"s" * 16))), ErrorCode.MALFORMED),  # bytes, not an array
        (encode(Close(b"s" * 16))[:-3], ErrorCode.MALFORMED),  # truncated
        (draft_raw(version=2), ErrorCode.BAD_VERSION),
        (draft_raw(version=True), ErrorCode.BAD_VERSION),
        (draft_raw(version=1.0), ErrorCode.BAD_VERSION),
        (draft_raw(type=3.0), ErrorCode.UNKNOWN_TYPE),
        (draft_raw(type=99), ErrorCode.UNKNOWN_TYPE),
        (draft_raw(session_id=b"short"), ErrorCode.MALFORMED),
        (draft_raw(seq=-1), ErrorCode.OUT_OF_RANGE),
        (draft_raw(seq="3"), ErrorCode.MALFORMED),
        (draft_raw(tokens=[1, "x"]), ErrorCode.MALFORMED),
        (draft_raw(tokens=[1, True]), ErrorCode.MALFORMED),
        (draft_raw(tokens=list(range(33))), ErrorCode.OVERSIZE),
        (draft_raw(tokens=[2**40]), ErrorCode.OUT_OF_RANGE),
        (draft_raw(q=[4, b"\0" * 8, b"\0" * 4]), ErrorCode.MALFORMED),  # sizes do not fit k=2
        (draft_raw(q=[1, b"\0" * 8, b"\0" * 4]), ErrorCode.OUT_OF_RANGE),  # all-zero weights
        (draft_raw(q=[99, b"", b""]), ErrorCode.OUT_OF_RANGE),
        (b"\x92" + b"\x91" * 2000, ErrorCode.MALFORMED),  # deep nesting
        (b"\xdd\xff\xff\xff\xff", ErrorCode.MALFORMED),  # claims a 4-billion entry array
        (b"x" * (600 * 1024), ErrorCode.OVERSIZE),
    ],
)
def test_malformed_is_a_typed_error(payload, code):
    with pytest.raises(WireError) as info:
        decode(payload)
    assert info.value.code == code
    assert str(info.value)  # a message a person can read


def open_raw(**changes):
    raw = msgpack.unpackb(encode(SessionOpen(b"s" * 16, [1, 2], Features.from_array(np.zeros((2, 3))))))
    fields = {"features": 4, "temperature": 5, "top_p": 7, "gamma": 9, "max_new_tokens": 11, "first_block": 15,
              "first_q": 16}
    raw += [None, None]  # no first block
    for name, value in changes.items():
        raw[fields[name]] = value
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize(
    "payload, code",
    [
        (open_raw(features=["float64", [2, 3], b"\0" * 48]), ErrorCode.BAD_FEATURES),
        (open_raw(features=["float16", [2, 3], b"\0" * 10]), ErrorCode.BAD_FEATURES),
        (open_raw(features=["float16", [0], b""]), ErrorCode.BAD_FEATURES),
        (open_raw(features=["float16", [1, 1, 1, 1], b"\0\0"]), ErrorCode.BAD_FEATURES),
        (open_raw(features=["float16", [1], b"\x00\x7e"]), ErrorCode.BAD_FEATURES),  # NaN
        (open_raw(features=["float16", [200_000], b"\0" * 400_000]), ErrorCode.OVERSIZE),
        (open_raw(temperature=float("nan")), ErrorCode.OUT_OF_RANGE),
        (open_raw(temperature=-1.0), ErrorCode.OUT_OF_RANGE),
        (open_raw(top_p=0.0), ErrorCode.OUT_OF_RANGE),
        (open_raw(gamma=1000), ErrorCode.OUT_OF_RANGE),
        (open_raw(max_new_tokens=0), ErrorCode.OUT_OF_RANGE),
        (open_raw(first_block=list(range(33))), ErrorCode.OVERSIZE),
        (open_raw(first_block=[1, "x"]), ErrorCode.MALFORMED),
        (open_raw(first_block=b"\x01\x02"), ErrorCode.MALFORMED),
        (open_raw(first_block=[1, 2], first_q=[4, b"\0" * 8, b"\0" * 4]), ErrorCode.MALFORMED),  # not k=2's size
        (open_raw(first_q=[1, b"\0" * 4, b"\1\0"]), ErrorCode.MALFORMED),  # a q with no block
    ],
)
def test_bad_open_fields(payload, code):
    with pytest.raises(WireError) as info:
        decode(payload)
    assert info.value.code == code


def test_an_open_carries_its_first_block_as_draft_seq_0():
    q = SparseQWire.from_arrays(np.array([[7, 9], [8, 0]]), np.array([[3, 1], [5, 0]]))
    msg = decode(encode(SessionOpen(b"s" * 16, [1, 2], generated_ids=[4], first_block=[7, 8], first_q=q)))
    assert msg.first_draft() == DraftMsg(b"s" * 16, 0, 3, [7, 8], q)  # committed: prompt + generated
    assert decode(open_raw()).first_draft() is None  # nil: no block; [] would be a block of zero drafts
    assert decode(encode(SessionOpen(b"s" * 16, [1], first_block=[]))).first_draft() == DraftMsg(b"s" * 16, 0, 1, [])


def test_an_opened_carries_the_first_blocks_verdict():
    sid = b"s" * 16
    verdict = VerdictMsg(sid, 0, [True, True, False], 2, 17, 9, False)
    msg = Opened(sid, "verifier-1", 6, verdict)
    assert decode(encode(msg)) == msg and decode(encode(msg)).first_verdict == verdict
    # Without one, the OPENED is the three fields it always was.
    assert msgpack.unpackb(encode(Opened(sid, "verifier-1", 6))) == [PROTOCOL_VERSION, MsgType.OPENED, sid,
                                                                     "verifier-1", 6]
    head = [PROTOCOL_VERSION, int(MsgType.OPENED), sid, "verifier-1", 6]
    assert decode(msgpack.packb(head + [None])).first_verdict is None
    for bad in ("x", [[True], 1, 17], [[1], 1, 17, 9, False], [[True], 2, 17, 9, False], [[True], 1, -1, 9, False]):
        with pytest.raises(WireError) as err:
            decode(msgpack.packb(head + [bad]))
        assert err.value.code in (ErrorCode.MALFORMED, ErrorCode.OUT_OF_RANGE)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_wire_error(data):
    try:
        decode(data)
    except WireError:
        pass


def test_result_json_round_trip_and_rejects():
    r = ResultMsg("cam-1", "ab" * 16, 1.5, "a red circle", [4, 5], 3, 0.8, 2.5, 300, 120, {"event": 1})
    assert ResultMsg.from_json(r.to_json()) == r
    for bad in (b"{", b"[]", b'{"v": 2}', b'{"v": 1, "device_id": 3}'):
        with pytest.raises(WireError):
            ResultMsg.from_json(bad)
