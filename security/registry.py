"""The verifier side's record of provisioned devices, and where the verifier's key ring lives.

    HOME/                    mode 0700
      devices/<id>.pub       a device's static X25519 public key (base64 text; raw 32 bytes or
                             PEM are read too). One file per device, replaced atomically.
      verifier/              `VerifierKeyRing.save` / `load`: verifier-<kid>.pem (0600), current
      .lock                  serialises read-modify-write of the key ring across processes

`edgespec flash` adds a device, `edgespec revoke` removes it. A verifier calls
`public_key(device_id)` on every session open: it costs one `stat` while the file is unchanged,
re-reads it when it changed (a re-flash) and returns None once it is gone (a revocation), so a
running verifier follows the fleet without a restart. `verifier_keys()` does the same for the
key ring after `edgespec keys rotate`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from security.ids import is_valid_id, validate_device_id
from security.keys import (DEFAULT_MAX_PREVIOUS, KeyFormatError, PublicKeyLike, VerifierKeyRing,
                           key_id, parse_public_key, public_key_from_b64, public_key_to_b64)
from security.mosquitto_files import atomic_write_text

DEVICES_DIR = "devices"
VERIFIER_DIR = "verifier"
LOCK_NAME = ".lock"
PUB_SUFFIX = ".pub"
HOME_MODE = 0o700
MAX_KEY_FILE_BYTES = 4096  # a PEM public key is ~110 bytes
RING_LOAD_RETRIES = 3  # a concurrent `keys rotate` may delete a file between two reads

_StatKey = tuple[int, int, int, int]  # (inode, size, mtime ns, ctime ns)


class RegistryError(ValueError):
    """A registry or key ring that is missing or unreadable; the message says what to run."""


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def parse_public_key_file(data: bytes, where: str = "public key") -> X25519PublicKey:
    """An X25519 public key from raw 32 bytes, base64 text or SubjectPublicKeyInfo PEM."""
    try:
        return parse_public_key(data, where)
    except KeyFormatError as exc:
        raise RegistryError(f"{exc}; re-flash the device") from None


class FleetRegistry:
    """Provisioned devices' public keys under `home`, with a per-file cache keyed by `stat`.

    Safe to share between threads; several processes may use one home (writes are atomic
    renames, key ring updates hold `home/.lock`).
    """

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home).expanduser()
        self._cache: dict[str, tuple[_StatKey, X25519PublicKey]] = {}
        self._ring: tuple[_StatKey, VerifierKeyRing] | None = None
        self._mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"FleetRegistry({str(self.home)!r})"

    @property
    def devices_dir(self) -> Path:
        return self.home / DEVICES_DIR

    @property
    def verifier_dir(self) -> Path:
        """Where the verifier's key ring lives (`VerifierKeyRing.save` / `load`)."""
        return self.home / VERIFIER_DIR

    def _device_path(self, device_id: str) -> Path:
        return self.devices_dir / f"{device_id}{PUB_SUFFIX}"

    def _ensure_home(self) -> None:
        if not self.home.exists():
            self.home.mkdir(parents=True, mode=HOME_MODE, exist_ok=True)
            os.chmod(self.home, HOME_MODE)
        self.devices_dir.mkdir(exist_ok=True)

    # ------------------------------------------------------------ devices

    def add(self, device_id: str, public_key: PublicKeyLike | str) -> str:
        """Record (or replace) a device's public key; returns its key id.

        `public_key` is an X25519PublicKey, its raw 32 bytes or base64 text.
        """
        validate_device_id(device_id)
        if isinstance(public_key, str):
            public_key = public_key_from_b64(public_key)
        b64 = public_key_to_b64(public_key)
        self._ensure_home()
        atomic_write_text(self._device_path(device_id), b64 + "\n", mode=0o644)
        return key_id(public_key)

    def remove(self, device_id: str) -> bool:
        """Forget a device; True if it was registered. Its next session open is refused."""
        if not is_valid_id(device_id):
            return False
        try:
            self._device_path(device_id).unlink()
        except FileNotFoundError:
            return False
        finally:
            with self._mutex:
                self._cache.pop(device_id, None)
        return True

    def public_key(self, device_id: str) -> X25519PublicKey | None:
        """The device's current public key, or None if it is not (or no longer) provisioned.

        One `stat` per call while the file is unchanged. An id that could not be a device id
        is simply unknown (None). A file that exists but holds no key raises `RegistryError`.
        """
        if not is_valid_id(device_id):
            return None
        path = self._device_path(device_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            with self._mutex:
                self._cache.pop(device_id, None)
            return None
        stamp = _stat_key(st)
        with self._mutex:
            cached = self._cache.get(device_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_KEY_FILE_BYTES + 1)
                stamp = _stat_key(os.fstat(handle.fileno()))  # the file actually read
        except FileNotFoundError:
            return None  # removed between stat and open
        if len(data) > MAX_KEY_FILE_BYTES:
            raise RegistryError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key")
        key = parse_public_key_file(data, str(path))
        with self._mutex:
            self._cache[device_id] = (stamp, key)
        return key

    def __contains__(self, device_id: object) -> bool:
        return isinstance(device_id, str) and is_valid_id(device_id) \
            and self._device_path(device_id).is_file()

    def devices(self) -> list[str]:
        """Ids of every registered device, sorted."""
        try:
            names = [p.name for p in self.devices_dir.iterdir()]
        except FileNotFoundError:
            return []
        ids = (n[:-len(PUB_SUFFIX)] for n in names if n.endswith(PUB_SUFFIX))
        return sorted(i for i in ids if is_valid_id(i))

    # ------------------------------------------------------------ verifier key ring

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold `home/.lock` (an advisory lock, also between threads of one process)."""
        self._ensure_home()
        with open(self.home / LOCK_NAME, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def has_verifier_keys(self) -> bool:
        return (self.verifier_dir / "current").is_file()

    def verifier_keys(self) -> VerifierKeyRing:
        """The key ring, re-read only when `verifier/current` changed (after rotate/retire)."""
        current = self.verifier_dir / "current"
        for attempt in range(RING_LOAD_RETRIES):
            try:
                stamp = _stat_key(current.stat())
            except FileNotFoundError:
                raise RegistryError(f"no verifier key ring in {self.verifier_dir}: run "
                                    f"`edgespec keys init --home {self.home}`") from None
            with self._mutex:
                if self._ring is not None and self._ring[0] == stamp:
                    return self._ring[1]
            try:
                # Keep every key `current` lists: load()'s default would drop all but the two
                # newest previous keys after `keys rotate --max-previous N`.
                held = len((self.verifier_dir / "current").read_text("ascii").split())
                ring = VerifierKeyRing.load(self.verifier_dir,
                                            max_previous=max(DEFAULT_MAX_PREVIOUS, held - 1))
            except FileNotFoundError:
                if attempt + 1 == RING_LOAD_RETRIES:
                    raise RegistryError(f"{self.verifier_dir}: a key named in 'current' is "
                                        "missing; run `edgespec keys list` to check") from None
                continue  # a rotation replaced the files while we read them
            except KeyFormatError as exc:
                raise RegistryError(f"{self.verifier_dir}: {exc}") from None
            if _stat_key(current.stat()) == stamp:
                with self._mutex:
                    self._ring = (stamp, ring)
                return ring
        return ring

    def save_verifier_keys(self, ring: VerifierKeyRing) -> Path:
        """Write the key ring (hold `locked()` around a load-modify-save)."""
        self._ensure_home()
        path = ring.save(self.verifier_dir)
        os.chmod(self.verifier_dir, HOME_MODE)
        return path

