"""The verifier's key ring: its current static key and a few previous ones, kept on disk."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from .key_files import load_private_key, save_private_key, write_secret_file
from .key_pairs import KeyFormatError, KeyPair, PublicKeyLike, UnknownKeyId, generate_keypair
from .session_keys import SessionKeys, verifier_session_keys

DEFAULT_MAX_PREVIOUS = 2


class VerifierKeyRing:
    """The verifier's current static key plus a few previous ones, looked up by key id.

    New sessions are opened for `current` (devices learn its public key and id from their
    config or the verifier's status). After `rotate()`, sessions that a device opened under the
    previous key keep working because the session open names the key id it was made for; the
    oldest previous key is dropped once more than `max_previous` are held, or explicitly with
    `retire()` when no session uses it any more.
    """

    def __init__(self, current: KeyPair, previous: Iterable[KeyPair] = (), *,
                 max_previous: int = DEFAULT_MAX_PREVIOUS) -> None:
        if max_previous < 0:
            raise ValueError("max_previous must be >= 0")
        self.max_previous = max_previous
        self._current = current
        self._previous: OrderedDict[str, KeyPair] = OrderedDict()  # oldest first
        for pair in previous:
            self._add_previous(pair)

    def _add_previous(self, pair: KeyPair) -> None:
        if pair.key_id == self._current.key_id:
            return
        self._previous.pop(pair.key_id, None)
        self._previous[pair.key_id] = pair
        while len(self._previous) > self.max_previous:
            self._previous.popitem(last=False)

    @property
    def current(self) -> KeyPair:
        return self._current

    @property
    def current_key_id(self) -> str:
        return self._current.key_id

    def key_ids(self) -> list[str]:
        """Every key id accepted, current first, then previous ones newest first."""
        return [self._current.key_id, *reversed(self._previous)]

    def public_keys(self) -> dict[str, bytes]:
        """Raw public key by key id, for every key accepted (current first)."""
        return {kid: self.get(kid).public_bytes for kid in self.key_ids()}

    def get(self, kid: str) -> KeyPair:
        """The key pair for `kid`, or `UnknownKeyId` (tell the device to re-open its session)."""
        if kid == self._current.key_id:
            return self._current
        try:
            return self._previous[kid]
        except KeyError:
            raise UnknownKeyId(
                f"verifier key id {kid!r} is not held (current {self.current_key_id!r}, "
                f"previous {list(self._previous)!r}): the device must re-open its session "
                "with the verifier's current public key") from None

    def __contains__(self, kid: object) -> bool:
        return kid == self._current.key_id or kid in self._previous

    def rotate(self, new: KeyPair | None = None) -> KeyPair:
        """Make `new` (or a fresh pair) current; the old current becomes a previous key."""
        new = new if new is not None else generate_keypair()
        if new.key_id == self._current.key_id:
            return new
        old = self._current
        self._previous.pop(new.key_id, None)
        self._current = new
        self._add_previous(old)
        return new

    def retire(self, kid: str) -> None:
        """Forget a previous key; sessions opened under it will get `UnknownKeyId`."""
        if kid == self._current.key_id:
            raise ValueError(f"key {kid!r} is the current key: rotate() before retiring it")
        if self._previous.pop(kid, None) is None:
            raise UnknownKeyId(f"verifier key id {kid!r} is not a previous key of this ring")

    def session_keys(self, kid: str, device_static_pub: PublicKeyLike,
                     ephemeral_pub: PublicKeyLike, session_id: bytes) -> SessionKeys:
        """`verifier_session_keys` with the private key that `kid` names."""
        return verifier_session_keys(self.get(kid), device_static_pub, ephemeral_pub, session_id)

    def save(self, directory: str | Path) -> Path:
        """Write every key (PEM, mode 0600) and a `current` file naming the current key id."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keep = {f"verifier-{kid}.pem" for kid in self.key_ids()}
        for kid in self.key_ids():
            save_private_key(directory / f"verifier-{kid}.pem", self.get(kid))
        order = "\n".join(self.key_ids()) + "\n"
        write_secret_file(directory / "current", order.encode("ascii"))
        for stale in directory.glob("verifier-*.pem"):
            if stale.name not in keep:
                stale.unlink()
        return directory

    @classmethod
    def load(cls, directory: str | Path, *,
             max_previous: int = DEFAULT_MAX_PREVIOUS) -> VerifierKeyRing:
        """Read a ring written by `save` (the `current` file lists ids, current first)."""
        directory = Path(directory)
        try:
            ids = (directory / "current").read_text("ascii").split()
        except FileNotFoundError:
            raise KeyFormatError(f"{directory}: no 'current' file; is this a key ring "
                                 "written by VerifierKeyRing.save?") from None
        if not ids:
            raise KeyFormatError(f"{directory}/current names no key id")
        pairs = [load_private_key(directory / f"verifier-{kid}.pem") for kid in ids]
        for kid, pair in zip(ids, pairs):
            if pair.key_id != kid:
                raise KeyFormatError(f"{directory}: file for key id {kid!r} holds key "
                                     f"{pair.key_id!r}")
        return cls(pairs[0], reversed(pairs[1:]), max_previous=max_previous)
