"""AEAD envelopes, nonces, associated data and the replay window (security/envelope.py)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.envelope import (OVERHEAD, SEQ_MAX, DecryptError, Direction, EnvelopeError,
                               ReplayError, ReplayReason, ReplayWindow, SequenceError, build_aad,
                               make_nonce, open_sealed, seal)

KEY = bytes(range(32))
seqs = st.integers(min_value=0, max_value=SEQ_MAX)
directions = st.sampled_from(list(Direction))
aads = st.binary(max_size=64)
plaintexts = st.binary(max_size=256)


@given(directions, seqs, aads, plaintexts)
def test_seal_open_round_trip(direction: Direction, seq: int, aad: bytes, plain: bytes) -> None:
    sealed = seal(KEY, direction=direction, seq=seq, aad=aad, plaintext=plain)
    assert len(sealed) == len(plain) + OVERHEAD
    assert open_sealed(KEY, direction=direction, seq=seq, aad=aad, ciphertext=sealed) == plain


@settings(max_examples=60)
@given(seqs, aads, st.binary(min_size=1, max_size=64), st.data())
def test_flipping_any_bit_of_ciphertext_or_aad_fails(seq: int, aad: bytes, plain: bytes,
                                                     data: st.DataObject) -> None:
    sealed = seal(KEY, direction=Direction.UPLINK, seq=seq, aad=aad, plaintext=plain)
    i = data.draw(st.integers(0, len(sealed) - 1), label="ciphertext byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    tampered = bytearray(sealed)
    tampered[i] ^= 1 << bit
    with pytest.raises(DecryptError):
        open_sealed(KEY, direction=Direction.UPLINK, seq=seq, aad=aad, ciphertext=bytes(tampered))
    if aad:
        j = data.draw(st.integers(0, len(aad) - 1), label="aad byte")
        bad_aad = bytearray(aad)
        bad_aad[j] ^= 1 << bit
        with pytest.raises(DecryptError):
            open_sealed(KEY, direction=Direction.UPLINK, seq=seq, aad=bytes(bad_aad),
                        ciphertext=sealed)
    with pytest.raises(DecryptError):  # truncation, extension
        open_sealed(KEY, direction=Direction.UPLINK, seq=seq, aad=aad, ciphertext=sealed[:-1])
    with pytest.raises(DecryptError):
        open_sealed(KEY, direction=Direction.UPLINK, seq=seq, aad=aad, ciphertext=sealed + b"\0")


def test_wrong_key_direction_or_seq_fails() -> None:
    sealed = seal(KEY, direction=Direction.UPLINK, seq=7, aad=b"h", plaintext=b"draft")
    with pytest.raises(DecryptError, match="authentication"):
        open_sealed(os.urandom(32), direction=Direction.UPLINK, seq=7, aad=b"h", ciphertext=sealed)
    with pytest.raises(DecryptError):  # a reflected message
        open_sealed(KEY, direction=Direction.DOWNLINK, seq=7, aad=b"h", ciphertext=sealed)
    with pytest.raises(DecryptError):  # the sequence number is authenticated through the nonce
        open_sealed(KEY, direction=Direction.UPLINK, seq=8, aad=b"h", ciphertext=sealed)
    with pytest.raises(DecryptError, match="shorter"):
        open_sealed(KEY, direction=Direction.UPLINK, seq=7, aad=b"h", ciphertext=b"short")


@given(st.lists(st.tuples(directions, seqs), min_size=2, max_size=50, unique=True))
def test_nonces_are_unique_per_direction_and_seq(pairs: list[tuple[Direction, int]]) -> None:
    nonces = [make_nonce(d, s) for d, s in pairs]
    assert all(len(n) == 12 for n in nonces)
    assert len(set(nonces)) == len(pairs)


@pytest.mark.parametrize("seq", [-1, SEQ_MAX + 1, 2**70, 1.0, True, "3", None])
def test_seal_refuses_sequence_numbers_out_of_range(seq: object) -> None:
    with pytest.raises(SequenceError):
        seal(KEY, direction=Direction.UPLINK, seq=seq,  # type: ignore[arg-type]
             aad=b"", plaintext=b"x")


def test_bad_key_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="32 bytes"):
        seal(b"k" * 16, direction=Direction.UPLINK, seq=0, aad=b"", plaintext=b"x")


aad_fields = st.tuples(st.integers(0, 0xFFFF), st.text(max_size=20), st.text(max_size=20),
                       st.binary(max_size=20), seqs)


@given(aad_fields, aad_fields)
def test_aad_encoding_is_injective(a: tuple, b: tuple) -> None:
    assert (build_aad(*a) == build_aad(*b)) == (a == b)


def test_aad_binds_each_field() -> None:
    base = ("edgespec/v1/dev/cam-1/up/v/ver-1", "cam-1", b"s" * 16, 5)
    aad = build_aad(1, *base)
    sealed = seal(KEY, direction=Direction.UPLINK, seq=5, aad=aad, plaintext=b"tokens")
    variants = [build_aad(2, *base),
                build_aad(1, "edgespec/v1/dev/cam-2/up/v/ver-1", *base[1:]),
                build_aad(1, base[0], "cam-2", *base[2:]),
                build_aad(1, base[0], base[1], b"t" * 16, 5),
                build_aad(1, *base[:3], 6),
                # Moving bytes between adjacent fields changes the encoding too.
                build_aad(1, "edgespec/v1/dev/cam-1/up/v/ver-1c", "am-1", b"s" * 16, 5)]
    for other in variants:
        assert other != aad
        with pytest.raises(DecryptError):
            open_sealed(KEY, direction=Direction.UPLINK, seq=5, aad=other, ciphertext=sealed)
    with pytest.raises(EnvelopeError):
        build_aad(70000, *base)
    with pytest.raises(EnvelopeError):
        build_aad(1, "t" * 70000, "cam-1", b"", 0)
    with pytest.raises(EnvelopeError):
        build_aad(1, "t", "cam-1", "not bytes", 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------ replay window


def test_replay_window_basic() -> None:
    w = ReplayWindow(size=4)
    assert w.highest is None and w.check(0) is None
    w.accept(10)
    assert w.check(10) is ReplayReason.DUPLICATE
    with pytest.raises(ReplayError) as info:
        w.accept(10)
    assert info.value.reason is ReplayReason.DUPLICATE and info.value.highest == 10
    w.accept(8)  # out of order inside the window
    assert w.check(8) is ReplayReason.DUPLICATE
    assert w.check(9) is None and w.check(7) is None
    assert w.check(6) is ReplayReason.TOO_OLD  # 10 - 6 >= size
    w.accept(100)  # a jump larger than the window clears it
    assert w.check(99) is None and w.check(96) is ReplayReason.TOO_OLD
    assert w.check(10) is ReplayReason.TOO_OLD
    w.accept(SEQ_MAX)
    with pytest.raises(SequenceError):
        w.check(-1)


def test_check_does_not_change_state() -> None:
    w = ReplayWindow()
    w.accept(5)
    for seq in (4, 5, 6, 1000):
        w.check(seq)
    assert w.highest == 5 and w.check(6) is None and w.check(4) is None


@settings(max_examples=200)
@given(st.integers(1, 70), st.lists(st.integers(0, 300), max_size=120))
def test_replay_window_matches_a_reference_model(size: int, arrivals: list[int]) -> None:
    """Accept iff never accepted before and within `size` of the highest accepted so far."""
    w = ReplayWindow(size)
    accepted: set[int] = set()
    for seq in arrivals:
        top = max(accepted) if accepted else None
        if seq in accepted and (top is None or top - seq < size):
            expected: ReplayReason | None = ReplayReason.DUPLICATE
        elif top is not None and top - seq >= size:
            expected = ReplayReason.TOO_OLD
        else:
            expected = None
        assert w.check(seq) is expected
        if expected is None:
            w.accept(seq)
            accepted.add(seq)
        else:
            with pytest.raises(ReplayError):
                w.accept(seq)
        assert w.highest == (max(accepted) if accepted else None)


@given(st.permutations(list(range(64))))
def test_any_reordering_within_the_window_is_accepted_once(order: list[int]) -> None:
    w = ReplayWindow(64)
    for seq in order:
        w.accept(seq)
    assert all(w.check(seq) is ReplayReason.DUPLICATE for seq in range(64))


def test_window_size_is_validated() -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            ReplayWindow(bad)  # type: ignore[arg-type]
