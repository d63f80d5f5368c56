"""Which verifier of a pool answers a session OPEN, decided by the verifiers themselves.

Every verifier subscribes to every device's OPEN topic with a plain (not shared)
subscription and answers only the opens it owns: the owner of an OPEN is the member with the
highest score SHA-256(verifier id, 0, session id) (rendezvous hashing; the device id when the
session id cannot be read). A verifier's members are itself and each peer whose availability
says `online` and that was heard alive (a live `online` or a stats message, both only
verifiers may publish) within `ttl_s`. A retained `online` alone does not count: it may be
the last word of a verifier that is long gone.

Why not an MQTT shared subscription: a broker hands each member of a share group its part of
the messages, and Mosquitto 2.0's ACL cannot refuse anyone the SUBSCRIBE, so any account that
joined `$share/<group>/...` silently swallowed its part of other devices' opens. A plain subscription to a topic an
account may not read delivers it nothing and takes nothing from anyone, on any broker.

When views differ for a moment (a verifier starting, or one that died before its Last Will
came), an OPEN may be answered twice (the device takes the first OPENED; the other session
expires unused) or not at all (the device re-opens when a verifier's status turns `offline`,
or after its timeout). Both heal within one stats interval.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from schemas.topics import OFFLINE, ONLINE

DEFAULT_TTL_S = 15.0  # three stats intervals (verifier_node.service.STATS_INTERVAL_S)


def score(verifier_id: str, key: bytes) -> bytes:
    return hashlib.sha256(verifier_id.encode() + b"\0" + key).digest()


def owner_of(members: list[str] | set[str], key: bytes) -> str:
    """The member with the highest score for `key` (ties, never in practice, by id)."""
    return max(members, key=lambda v: (score(v, key), v))


class PoolMembership:
    """One verifier's view of the pool, fed from the verifiers' status and stats topics."""

    def __init__(self, self_id: str, *, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.self_id = self_id
        self.ttl_s = ttl_s
        self.clock = clock
        self._online: dict[str, bool] = {}
        self._alive_at: dict[str, float] = {}

    def status(self, verifier_id: str, payload: bytes, *, retained: bool) -> bool:
        """A peer's availability; True when it is a live `online` (a peer that just started)."""
        if verifier_id == self.self_id:
            return False
        if payload == OFFLINE:
            self._online[verifier_id] = False
            self._alive_at.pop(verifier_id, None)
            return False
        if payload == ONLINE:
            self._online[verifier_id] = True
            if not retained:
                self._alive_at[verifier_id] = self.clock()
                return True
        return False

    def alive(self, verifier_id: str) -> None:
        """A peer's stats arrived: it is alive now."""
        if verifier_id != self.self_id and self._online.get(verifier_id, True):
            self._online[verifier_id] = True
            self._alive_at[verifier_id] = self.clock()

    def members(self) -> list[str]:
        now = self.clock()
        peers = [v for v, at in self._alive_at.items()
                 if self._online.get(v) and now - at <= self.ttl_s]
        return sorted({self.self_id, *peers})

    def owns(self, key: bytes) -> bool:
        members = self.members()
        return len(members) == 1 or owner_of(members, key) == self.self_id
