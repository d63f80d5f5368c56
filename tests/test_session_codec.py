"""The session codec: plaintext and sealed sessions behind one small API."""

from __future__ import annotations

import pytest

from schemas import Close, DraftMsg, ErrorCode, Sealed, SealedOpen, SessionOpen, VerdictMsg, WireError, decode, encode
from security.channel import DeviceKeys
from security.keys import generate_keypair
from security.session_codec import PLAIN, PlainCodec, SealedCodec, SessionCodec

SID = bytes(range(16))
UP, DOWN, OPEN = "edgespec/v1/device/cam-1/up/s", "edgespec/v1/device/cam-1/down", "edgespec/v1/device/cam-1/up/open"


def pair() -> tuple[SealedCodec, SealedCodec, bytes]:
    """A device's codec, the verifier's codec for its sealed OPEN, and the OPEN's inner bytes."""
    device, verifier = generate_keypair(), generate_keypair()
    keys = DeviceKeys(device, verifier.public, verifier.key_id)
    opening = SessionOpen(session_id=SID, prompt_ids=[1, 2], max_new_tokens=4, gamma=2)
    device_codec, payload = SealedCodec.for_device(keys, "cam-1", SID, OPEN, opening)
    sealed_open = decode(payload)
    assert isinstance(sealed_open, SealedOpen) and sealed_open.ciphertext == device_codec.open_ciphertext
    verifier_codec, inner = SealedCodec.for_verifier(verifier, device.public, "cam-1", OPEN, sealed_open)
    assert decode(inner) == opening and verifier_codec.open_ciphertext == sealed_open.ciphertext
    return device_codec, verifier_codec, inner


def test_plain_codec_is_the_encoding_and_refuses_envelopes():
    codec: SessionCodec = PlainCodec()
    msg = Close(SID)
    assert codec.seal(UP, msg) == encode(msg) and not codec.sealed and PLAIN == codec
    codec.refuse_plain()  # plaintext is this session's wire format
    with pytest.raises(WireError) as err:
        codec.open(UP, Sealed(SID, 1, b"x" * 32))
    assert err.value.code == ErrorCode.WRONG_DEVICE


def test_sealed_codec_round_trip_both_ways():
    device, verifier, _ = pair()
    assert device.sealed and verifier.sealed
    draft = DraftMsg(SID, 0, 2, [3, 4], None)
    up = decode(device.seal(UP, draft))
    assert isinstance(up, Sealed) and up.seq == 1  # seq 0 was the OPEN
    inner, duplicate = verifier.open(UP, up)
    assert decode(inner) == draft and not duplicate
    verdict = VerdictMsg(SID, 0, [True, False], 1, 7, 4, False)
    down = decode(verifier.seal(DOWN, verdict))
    assert isinstance(down, Sealed)
    inner, duplicate = device.open(DOWN, down)
    assert decode(inner) == verdict and not duplicate


def test_sealed_codec_flags_duplicates_and_refuses_plaintext_and_forgeries():
    device, verifier, _ = pair()
    up = decode(device.seal(UP, Close(SID)))
    assert verifier.open(UP, up)[1] is False and verifier.open(UP, up)[1] is True  # QoS-1 redelivery
    with pytest.raises(WireError) as err:
        verifier.refuse_plain()
    assert err.value.code == ErrorCode.PLAINTEXT_REFUSED
    with pytest.raises(WireError) as err:
        verifier.open(DOWN, decode(device.seal(UP, Close(SID))))  # sealed for another topic
    assert err.value.code == ErrorCode.DECRYPT_FAILED
