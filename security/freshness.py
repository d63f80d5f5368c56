"""Freshness of sealed session OPENs, across verifier restarts and a verifier pool.

A sealed OPEN authenticates its device but says nothing about *when* it was sent, so a
captured one could be replayed later (the verifier would prefill, verify and answer it again).
Two rules make a replay useless:

* **A timestamp window.** The OPEN carries `sent_at_ms` inside the AEAD (the device cannot be
  impersonated, and the field cannot be altered). A verifier refuses an OPEN sent more than
  `window_s` away from its own clock (`stale`): device and verifier clocks must agree within
  the window (NTP).
* **A seen-opens record.** Inside the window, each OPEN is known by a digest of its device id
  and its ephemeral key (a device makes a fresh one for every open and re-open). A digest
  already recorded is refused (`seen`). Entries expire with the window, so the record stays
  as small as the opens of `window_s` seconds.

The record is a file (`path`), appended under an exclusive `flock` and re-read by every
check, so it survives a restart and is shared by every verifier process that is given the same
file (a pool on one host or one shared volume: `edgespec verifier --home DIR` uses
`DIR/replay/opens.log`). Appends are not fsync'd: a verifier process that dies loses nothing
(the kernel has the write); a host that loses power may forget the last seconds of opens.
Verifiers on separate hosts without a shared volume each keep their own record: a replay
within the window reaches only the verifier that owns the session's opens (see
verifier_node/membership.py), which refuses it unless the pool's membership changed meanwhile.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_WINDOW_S = 120.0
DIGEST_LEN = 16
COMPACT_MIN_LINES = 4096  # rewrite the file once it holds this many lines and most are expired


class StaleOpen(ValueError):
    """An OPEN outside the window, without a timestamp, or already seen. `.reason` says which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "stale", "no_timestamp" or "seen"


def open_digest(device_id: str, ephemeral_pub: bytes) -> bytes:
    """What the record keeps of one OPEN."""
    h = hashlib.sha256(b"edgespec open\0" + device_id.encode() + b"\0" + bytes(ephemeral_pub))
    return h.digest()[:DIGEST_LEN]


class OpenFreshness:
    """`check(device_id, ephemeral_pub, sent_at_ms)` raises `StaleOpen` or records the OPEN."""

    def __init__(self, path: str | Path | None = None, *, window_s: float = DEFAULT_WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, not {window_s!r}")
        self.path = None if path is None else Path(path)
        self.window_s = float(window_s)
        self.clock = clock
        self._seen: dict[bytes, float] = {}  # digest -> expiry (Unix seconds)
        self._offset = 0  # bytes of the file already read
        self._inode: int | None = None
        self._lines = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path.touch(mode=0o600, exist_ok=True)

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, device_id: str, ephemeral_pub: bytes, sent_at_ms: int | None) -> None:
        now = self.clock()
        if sent_at_ms is None:
            raise StaleOpen("no_timestamp", "the OPEN carries no sent_at_ms: update the device")
        skew = sent_at_ms / 1000 - now
        if abs(skew) > self.window_s:
            raise StaleOpen("stale", f"the OPEN was sent {skew:+.0f} s from this verifier's clock, "
                                     f"outside +-{self.window_s:.0f} s (a replay, or a clock to fix)")
        digest = open_digest(device_id, ephemeral_pub)
        expiry = sent_at_ms / 1000 + self.window_s + 1
        if self.path is None:
            self._check_add(digest, expiry, now)
            return
        # The lock is a file of its own: compaction replaces the record's inode.
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                with open(self.path, "a+b") as handle:
                    self._catch_up(handle)
                    self._check_add(digest, expiry, now)
                    handle.seek(0, os.SEEK_END)
                    handle.write(f"{expiry:.3f} {digest.hex()}\n".encode())
                    handle.flush()
                    self._offset = handle.tell()
                    self._lines += 1
                if self._lines >= COMPACT_MIN_LINES and self._lines > 2 * len(self._seen):
                    self._compact()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _check_add(self, digest: bytes, expiry: float, now: float) -> None:
        if self._seen.get(digest, 0.0) > now:
            raise StaleOpen("seen", "this sealed OPEN was already used; a device opens with fresh keys")
        if len(self._seen) > 1024 and len(self._seen) % 256 == 0:
            self._seen = {d: e for d, e in self._seen.items() if e > now}
        self._seen[digest] = expiry

    def _catch_up(self, handle) -> None:
        """Read what other processes (or this one before a restart) appended."""
        st = os.fstat(handle.fileno())
        if st.st_ino != self._inode or st.st_size < self._offset:  # first read, or compacted
            self._inode, self._offset, self._lines = st.st_ino, 0, 0
        handle.seek(self._offset)
        data = handle.read()
        end = data.rfind(b"\n") + 1  # a torn last line (a writer that died mid-write) waits
        for line in data[:end].splitlines():
            self._lines += 1
            try:
                expiry_s, hexdigest = line.split()
                digest = bytes.fromhex(hexdigest.decode())
                self._seen[digest] = max(float(expiry_s), self._seen.get(digest, 0.0))
            except ValueError:
                continue  # a damaged line is skipped, never fatal
        self._offset += end

    def _compact(self) -> None:
        """Rewrite the file with the live entries only (under the lock; readers see a new inode)."""
        assert self.path is not None
        now = self.clock()
        live = {d: e for d, e in self._seen.items() if e > now}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            out.write(b"".join(f"{e:.3f} {d.hex()}\n".encode() for d, e in live.items()))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._seen = live
        self._inode = None  # the next check re-reads the new file from its start
