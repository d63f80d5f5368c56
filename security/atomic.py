"""Atomic, locked file updates (the broker's password, ACL and config files, the registry).

Every update is atomic (a temporary file in the same folder, fsync, rename) and serialised
across processes with an advisory lock on `<file>.lock`, so a reader never sees a half-written
file and two concurrent writers do not lose each other's changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600  # new files; an existing file keeps its mode (the broker may need group read)


class MosquittoFileError(ValueError):
    """A password file, ACL or config that cannot be parsed or written as asked."""


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `<path>.lock` (made, with its folder, if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def atomic_write_text(path: str | Path, text: str, *, mode: int | None = None) -> Path:
    """Replace `path` with `text` atomically; keeps an existing file's mode, else `FILE_MODE`."""
    path = Path(path)
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    if mode is None:
        mode = old.st_mode & 0o777 if old is not None else FILE_MODE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed os.open's mode
        if old is not None and os.geteuid() == 0 and (old.st_uid, old.st_gid) != (0, 0):
            # root rewriting a file the broker's account owns (mode 0600): keep it the owner,
            # or Mosquitto could no longer read it at its next SIGHUP and would exit.
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
