"""Stateless attacks with other devices' traffic: captured messages replayed, their session ids
reused, unknown sessions, and (with --spoof) payloads on a victim's own topics. Each returns one
Attack for `me`, or None when no traffic has been captured yet."""

from __future__ import annotations

from schemas import Close, DraftMsg, ErrorCode, Sealed, encode

from .attacks_sealed import _seal_open
from .contract import OPENED, RESYNC, SPOOFED, Attack, _exp, reason
from .templates import valid_open


def gen_replay_captured(ctx, me, rng):
    """Another device's captured sealed message replayed on the attacker's own topic."""
    cap = ctx.foreign(me.device_id, rng)
    if cap is None:
        return None
    if cap.is_open:
        # Its session held: fails to authenticate as this device's (or this device is unknown);
        # its session over: a verifier that remembers sealed OPENs calls it a replay first.
        return Attack("replay_captured", ctx.topics.open(me.device_id), cap.payload,
                      _exp(reason(me.sealed_open_refusal), reason(ErrorCode.REPLAY)), note="open")
    # Held by its device: wrong device; finished: resync; squatted by this attacker: decrypt failed.
    return Attack("replay_captured", ctx.topics.session_up(me.device_id, ctx.verifier_id), cap.payload,
                  _exp(reason(ErrorCode.WRONG_DEVICE), RESYNC, reason(ErrorCode.DECRYPT_FAILED)), note="sealed")


def gen_foreign_session(ctx, me, rng):
    """Another device's session id (from captured traffic) on the attacker's own topics."""
    cap = ctx.foreign(me.device_id, rng)
    if cap is None:
        return None
    sid, up, op = cap.session_id, ctx.topics.session_up(me.device_id, ctx.verifier_id), ctx.topics.open(me.device_id)
    how = rng.choice(["sealed", "plain_draft", "plain_close", "plain_open", "squat"])
    if how == "sealed":
        return Attack("foreign_session", up, encode(Sealed(sid, rng.randrange(1, 50), rng.randbytes(40))),
                      _exp(reason(ErrorCode.WRONG_DEVICE), RESYNC, reason(ErrorCode.DECRYPT_FAILED)), note=how)
    if how == "plain_draft":
        return Attack("foreign_session", up, encode(DraftMsg(sid, rng.randrange(50), 5, [1, 2])),
                      _exp(reason(ErrorCode.PLAINTEXT_REFUSED)), note=how)
    if how == "plain_close":
        return Attack("foreign_session", up, encode(Close(sid, "bye")), _exp(reason(ErrorCode.PLAINTEXT_REFUSED)),
                      note=how)
    if how == "plain_open" or not me.provisioned:
        payload = encode(valid_open(ctx, rng, sid)) if how == "plain_open" else encode(
            _seal_open(ctx, me, valid_open(ctx, rng, sid))[1])
        code = ErrorCode.PLAINTEXT_REFUSED if how == "plain_open" else ErrorCode.UNKNOWN_DEVICE
        return Attack("foreign_session", op, payload, _exp(reason(code)), note=how)
    # A well-sealed OPEN of the attacker's own with the other device's session id: refused while
    # that device holds it; once it finished, the id is free and the attacker gets a session.
    cipher, so = _seal_open(ctx, me, valid_open(ctx, rng, sid))
    return Attack("foreign_session", op, encode(so), _exp(reason(ErrorCode.WRONG_DEVICE), OPENED), cipher=cipher,
                  note=how, new_session=True)


def gen_unknown_session(ctx, me, rng):
    sid, up = rng.randbytes(16), ctx.topics.session_up(me.device_id, ctx.verifier_id)
    how = rng.choice(["sealed", "plain_draft", "plain_close"])
    if how == "sealed":
        return Attack("unknown_session", up, encode(Sealed(sid, rng.randrange(2**20), rng.randbytes(60))),
                      _exp(RESYNC), note=how)
    msg = DraftMsg(sid, rng.randrange(50), 3, [1]) if how == "plain_draft" else Close(sid)
    return Attack("unknown_session", up, encode(msg), _exp(reason(ErrorCode.PLAINTEXT_REFUSED)), note=how)


def gen_spoof(ctx, me, rng):
    """Only with --spoof on an open broker: payloads on a well-behaved device's own topics."""
    cap = ctx.foreign(me.device_id, rng, victims_only=True)
    if cap is None:
        return None
    dev = cap.device_id
    up, op = ctx.topics.session_up(dev, ctx.verifier_id), ctx.topics.open(dev)
    how = rng.choice(["replay", "garbage_sealed", "plain_draft", "plain_close"])
    if how == "replay":
        topic, payload = (op if cap.is_open else up), cap.payload
    elif how == "garbage_sealed":
        topic, payload = up, encode(Sealed(cap.session_id, rng.randrange(1, 60), rng.randbytes(40)))
    elif how == "plain_draft":
        topic, payload = up, encode(DraftMsg(cap.session_id, rng.randrange(12), 5, [1]))
    else:
        topic, payload = up, encode(Close(cap.session_id))
    return Attack("spoof", topic, payload, _exp(SPOOFED), reply=False, counted="spoof", note=how)
