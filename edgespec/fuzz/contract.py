"""The fuzzer's model of the wire contract (schemas/README.md): the outcomes a payload can have,
an attack and the outcomes allowed for it, what attackers know, and the outcome the contract
prescribes for a payload whose session id nobody holds."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack

from schemas import Close, DraftMsg, ErrorCode, ErrorMsg, Sealed, SealedOpen, SessionOpen, Topics, WireError, decode
from schemas.messages import DEFAULT_LIMITS


# Outcomes that are not rejections (a rejection's outcome is its ErrorCode name, e.g. "malformed").
RESYNC, OPENED, VERDICT = "resync", "opened", "verdict"
NO_REPLY = "no_reply"  # handled, answered to nobody (a CLOSE; a bad topic, counted)
DROPPED = "dropped"  # never reached the verifier (the broker's ACL, or no subscription matches)
SPOOFED = "spoofed"  # published on a victim's topic: the answer goes to the victim
NON_REJECTIONS = {RESYNC, OPENED, VERDICT, NO_REPLY, DROPPED, SPOOFED}

# Kinds whose contract outcome the verifier does not give today (see the report's findings).
KNOWN_BUG_KINDS: tuple[str, ...] = ()  # all found so far are fixed (tests/test_fuzz.py pins them)


def reason(code: ErrorCode) -> str:
    """ErrorCode -> counter key."""
    return code.name.lower()


def error_outcome(msg: ErrorMsg) -> str:
    """The outcome of an ERROR reply: its code's counter key, or `code_<n>` for an unknown code."""
    try:
        return reason(ErrorCode(msg.code))
    except ValueError:
        return f"code_{msg.code}"


# ====================================================================== attacks


@dataclass
class Attack:
    """One payload on one topic, and the outcomes the contract allows for it."""

    kind: str
    topic: str
    payload: bytes
    expect: frozenset[str]
    reply: bool = True  # the verifier answers on the sender's downlink
    counted: str | None = None  # counted by the verifier without a reply to the sender
    cipher: Any = None  # the sender's cipher for a sealed answer
    scaffold: bool = False  # a well-formed message a stateful attacker needs (not hostile)
    note: str = ""
    new_session: bool = False  # if the verifier accepts it, it opened a session to give back


def _exp(*outcomes: str) -> frozenset[str]:
    return frozenset(outcomes)


def fence(topic: str, kind: str = "fence") -> Attack:
    """A malformed payload that must be answered: once its ERROR is back, all before it on
    `topic` were handled."""
    return Attack(kind, topic, b"\xc1", _exp(reason(ErrorCode.MALFORMED)), scaffold=True)


@dataclass
class Captured:
    """A sealed uplink message a recorder saw."""

    device_id: str
    topic: str
    session_id: bytes
    payload: bytes
    is_open: bool


@dataclass
class FuzzContext:
    """What attackers know: the layout, the target's public facts and the traffic they saw."""

    topics: Topics
    verifier_id: str
    vocab: int
    fingerprint: bytes
    feature_shape: tuple[int, ...] | None
    max_positions: int
    verifier_pub: Any
    verifier_key_id: str
    acl: bool
    victims: tuple[str, ...] = ()
    captured: deque = field(default_factory=lambda: deque(maxlen=512))
    limits: Any = DEFAULT_LIMITS

    def subscriptions(self) -> tuple[str, ...]:
        # Not Topics.session_subscription: that validates the verifier id, which this never did.
        return self.topics.open_subscription(share_group=None), f"{self.topics.prefix}/dev/+/up/v/{self.verifier_id}"

    def verifier_receives(self, topic: str) -> bool:
        from paho.mqtt.client import topic_matches_sub

        try:
            return any(topic_matches_sub(s, topic) for s in self.subscriptions())
        except ValueError:
            return False

    def acl_allows(self, device_id: str, topic: str) -> bool:
        """The production ACL's write rule for a device: its own uplink subtree only."""
        from paho.mqtt.client import topic_matches_sub

        return not self.acl or topic_matches_sub(f"{self.topics.prefix}/dev/{device_id}/up/#", topic)

    def foreign(self, me: str, rng: random.Random, victims_only: bool = False) -> Captured | None:
        """Another device's captured message; half the time one of the latest (a live session)."""
        pool = [c for c in self.captured if c.device_id != me and (not victims_only or c.device_id in self.victims)]
        if not pool:
            return None
        return rng.choice(pool[-8:] if rng.random() < 0.5 else pool)


@dataclass
class Identity:
    """An attacker: its device id and, when provisioned, its keys (security.channel.DeviceKeys)."""

    device_id: str
    keys: Any = None  # None: a stranger nobody provisioned (its sealed opens use a random key)

    @property
    def provisioned(self) -> bool:
        return self.keys is not None

    @property
    def sealed_open_refusal(self) -> ErrorCode:
        """Why the verifier refuses a sealed OPEN from this device that does not authenticate."""
        return ErrorCode.DECRYPT_FAILED if self.provisioned else ErrorCode.UNKNOWN_DEVICE


# ---------------------------------------------------------------------- prediction


def peek_session_id(payload: bytes) -> bytes | None:
    try:
        items = msgpack.unpackb(payload, raw=False, max_bin_len=1 << 20)
    except Exception:
        return None
    if isinstance(items, list) and len(items) > 2 and isinstance(items[2], bytes) and len(items[2]) == 16:
        return items[2]
    return None


def predict(ctx: FuzzContext, me: Identity, kind: str, topic: str, payload: bytes, note: str = "") -> Attack:
    """The contract's outcome for a payload whose session id nobody holds, from the decoder itself."""
    if not ctx.verifier_receives(topic) or not ctx.acl_allows(me.device_id, topic):
        return Attack(kind, topic, payload, _exp(DROPPED), reply=False, note=note)
    try:
        uplink = ctx.topics.parse_uplink(topic)
    except WireError as err:
        return Attack(kind, topic, payload, _exp(NO_REPLY), reply=False, counted=err.reason, note=note)
    try:
        msg = decode(payload, ctx.limits)
    except WireError as err:
        return Attack(kind, topic, payload, _exp(err.reason), note=note)
    except Exception as exc:  # the decoder itself failed: a bug the verifier will count as internal
        return Attack(kind, topic, payload, _exp(reason(ErrorCode.INTERNAL)), note=f"decoder raised {exc!r}")
    if uplink.kind == "open":
        if isinstance(msg, SealedOpen):
            code = me.sealed_open_refusal
        elif isinstance(msg, SessionOpen):
            code = ErrorCode.PLAINTEXT_REFUSED
        else:
            code = ErrorCode.UNKNOWN_TYPE
        return Attack(kind, topic, payload, _exp(reason(code)), note=note)
    if isinstance(msg, Sealed):
        return Attack(kind, topic, payload, _exp(RESYNC), note=note)
    if isinstance(msg, (DraftMsg, Close)):
        return Attack(kind, topic, payload, _exp(reason(ErrorCode.PLAINTEXT_REFUSED)), note=note)
    return Attack(kind, topic, payload, _exp(reason(ErrorCode.UNKNOWN_TYPE)), note=note)
