"""Mosquitto 2.0 password file, ACL file and production config, written from Python.

Password file lines are `username:$7$<iterations>$<salt>$<hash>`: PBKDF2-HMAC-SHA512 over the
UTF-8 password with a 12-byte random salt, 101 iterations by default, a 64-byte result, salt
and hash in standard base64 with padding (as `mosquitto_passwd` 2.0 writes them; the broker
drops entries whose salt is not 12 bytes or whose hash is not 64). Lines starting with `#` are
comments. Mosquitto re-reads both files on SIGHUP and disconnects clients whose credentials no
longer verify.

Every update here is atomic and locked (`security/atomic.py`), so the broker never reads a
half-written file and two concurrent `edgespec flash` runs do not lose each other's entries.
The ACL file is rendered by `security/acl.py`; its names are importable from here too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.topics import DEFAULT_PREFIX  # noqa: F401 (the default of every prefix option)
from security.acl import ACL_TEMPLATE, DEFAULT_HA_PREFIX, AclPolicy, render_acl, write_acl_file  # noqa: F401
from security.atomic import FILE_MODE, MosquittoFileError, atomic_write_text, locked
from security.ids import InvalidIdentifier, validate_username

BROKER_DIR = Path(__file__).resolve().parent.parent / "broker"
PROD_CONFIG = BROKER_DIR / "mosquitto-prod.conf"

DEFAULT_ITERATIONS = 101  # mosquitto_passwd's default for $7$
SALT_LEN = 12  # the only salt length Mosquitto 2.0 accepts
HASH_LEN = 64  # SHA-512 output


# ---------------------------------------------------------------- password hashes


def _check_password(password: str) -> bytes:
    if not isinstance(password, str) or password == "":
        raise MosquittoFileError("password must be a non-empty str")
    if "\0" in password:
        # The broker hashes strlen(password) bytes: anything after a NUL would be ignored.
        raise MosquittoFileError("password must not contain NUL characters")
    return password.encode("utf-8")


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """The `$7$...` hash Mosquitto stores for `password` (PBKDF2-HMAC-SHA512)."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise MosquittoFileError(f"iterations must be a positive int, not {iterations!r}")
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    if len(salt) != SALT_LEN:
        raise MosquittoFileError(f"Mosquitto 2.0 accepts only {SALT_LEN}-byte salts")
    digest = hashlib.pbkdf2_hmac("sha512", _check_password(password), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches a `$7$` (PBKDF2) or legacy `$6$` (salted SHA-512) hash."""
    parts = password_hash.strip().split("$")
    try:
        if len(parts) == 5 and parts[:2] == ["", "7"]:
            iterations = int(parts[2])
            salt, expected = base64.b64decode(parts[3], validate=True), base64.b64decode(
                parts[4], validate=True)
            if iterations < 1:
                return False
            actual = hashlib.pbkdf2_hmac("sha512", _check_password(password), salt, iterations)
        elif len(parts) == 4 and parts[:2] == ["", "6"]:
            salt, expected = base64.b64decode(parts[2], validate=True), base64.b64decode(
                parts[3], validate=True)
            actual = hashlib.sha512(_check_password(password) + salt).digest()
        else:
            return False
    except (ValueError, binascii.Error):
        return False
    return len(salt) == SALT_LEN and hmac.compare_digest(actual, expected)


def generate_password(nbytes: int = 24) -> str:
    """A random URL-safe password (`nbytes` of entropy) for a device or service."""
    return secrets.token_urlsafe(nbytes)


def password_entry(username: str, password: str, *,
                   iterations: int = DEFAULT_ITERATIONS) -> str:
    """One password-file line (without newline) for `username`."""
    return f"{_check_user(username)}:{hash_password(password, iterations=iterations)}"


def _check_user(username: str) -> str:
    try:
        return validate_username(username, role="broker user")
    except InvalidIdentifier as exc:
        raise MosquittoFileError(str(exc)) from exc


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _entry_user(line: str) -> str | None:
    """Username of a password-file line as Mosquitto parses it, or None for other lines."""
    if line.startswith("#") or ":" not in line:
        return None
    return line.split(":", 1)[0].strip()


def read_password_file(path: str | Path) -> dict[str, str]:
    """Username -> stored hash for every entry (comments and malformed lines are skipped)."""
    entries: dict[str, str] = {}
    for line in _read_lines(Path(path)):
        user = _entry_user(line)
        if user:
            entries[user] = line.split(":", 2)[1].strip()
    return entries


def _update(path: Path, username: str, new_line: str | None) -> bool:
    with locked(path):
        lines = _read_lines(path)
        kept = [line for line in lines if _entry_user(line) != username]
        found = len(kept) != len(lines)
        if new_line is not None:
            kept.append(new_line)
        if new_line is not None or found:
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        return found


def set_password(path: str | Path, username: str, password: str, *,
                 iterations: int = DEFAULT_ITERATIONS) -> None:
    """Add `username` with `password`, or replace its entry; creates the file if needed."""
    _update(Path(path), _check_user(username),
            password_entry(username, password, iterations=iterations))


def set_password_hash(path: str | Path, username: str, password_hash: str) -> None:
    """Add or replace `username` with an already computed `$7$`/`$6$` hash."""
    if not re.fullmatch(r"\$7\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+|\$6\$[A-Za-z0-9+/=]+"
                        r"\$[A-Za-z0-9+/=]+", password_hash):
        raise MosquittoFileError("password_hash must look like $7$<iterations>$<salt>$<hash>")
    _update(Path(path), _check_user(username), f"{username}:{password_hash}")


def remove_user(path: str | Path, username: str) -> bool:
    """Remove `username`'s entry; True if it was there. Send SIGHUP to the broker afterwards."""
    return _update(Path(path), username, None)


def ensure_password_file(path: str | Path) -> Path:
    """Create an empty password file if none exists (Mosquitto refuses to start without it)."""
    path = Path(path)
    with locked(path):
        if not path.exists():
            atomic_write_text(path, "# edgespec broker users (edgespec flash / revoke)\n")
    return path


# ---------------------------------------------------------------- production config


@dataclass(frozen=True)
class BrokerFiles:
    """Where a production broker finds its files (absolute paths are safest)."""

    password_file: Path
    acl_file: Path
    cafile: Path
    certfile: Path
    keyfile: Path
    crlfile: Path
    persistence_dir: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> BrokerFiles:
        """The conventional layout of one folder (what `edgespec flash`/`ca init` write)."""
        d = Path(directory).resolve()
        return cls(password_file=d / "passwd", acl_file=d / "acl", cafile=d / "ca.crt",
                   certfile=d / "server.crt", keyfile=d / "server.key", crlfile=d / "ca.crl",
                   persistence_dir=d / "data")


_PATH_KEYS = {"password_file": "password_file", "acl_file": "acl_file", "cafile": "cafile",
              "certfile": "certfile", "keyfile": "keyfile", "crlfile": "crlfile",
              "persistence_location": "persistence_dir"}
PROD_LISTENERS = ("loopback", "mqtts", "mqtts_client_cert", "wss")


def _set_listeners(text: str, ports: dict[int, int], tls_bind: str | None, loopback_port: int | None,
                   websockets: bool) -> str:
    """The config with its TLS listeners (by position in PROD_LISTENERS) on `ports`, bound to
    `tls_bind`, the websockets one left out unless `websockets`, the loopback one moved."""
    listeners = list(re.finditer(r"(?m)^listener\s+(\d+)(?:\s+(\S+))?\s*$", text))
    if len(listeners) != len(PROD_LISTENERS):
        raise MosquittoFileError(f"production config must have {len(PROD_LISTENERS)} listener "
                                 f"lines in the order {PROD_LISTENERS}, found {len(listeners)}")
    for index in sorted(ports, reverse=True):  # back to front keeps earlier offsets valid
        match = listeners[index]
        line = f"listener {ports[index]}" + (f" {tls_bind}" if tls_bind else "")
        if index == 3 and not websockets:
            # The whole block (to the next blank line) goes: no websockets listener at all.
            end = text.find("\n\n", match.end())
            start = text.rfind("\n\n", 0, match.start())
            text = (text[:start + 1] + "# 4) No websockets listener (`broker-files init --websockets` adds one for "
                    "dashboards;\n#    Mosquitto 2.0.11 binds it on every interface, whatever address it names).\n"
                    + text[end + 1:])
            continue
        if index == 3 and tls_bind:
            line = (f"# Mosquitto 2.0.11 (libwebsockets) binds this listener on EVERY interface: the "
                    f"address below is\n# ignored. Firewall port {ports[index]} if it must stay on "
                    f"{tls_bind}.\n" + line)
        text = text[:match.start()] + line + text[match.end():]
    if loopback_port is not None:
        match = listeners[0]
        text = (text[:match.start()] + f"listener {int(loopback_port)} 127.0.0.1" + text[match.end():])
    return text


def _constant(text: str) -> Callable[[re.Match[str]], str]:
    """A `re.sub` replacement that is `text` as it stands (backslashes included)."""
    return lambda _m: text


def render_prod_config(files: BrokerFiles, *, mqtts_port: int = 8883,
                       client_cert_port: int = 8885, wss_port: int = 8884,
                       tls_bind: str | None = None, user: str | None = None,
                       template: str | None = None, loopback_port: int | None = None,
                       websockets: bool = True, dynsec_file: str | Path | None = None,
                       dynsec_plugin: str | Path | None = None) -> str:
    """Production config text with `files` and ports filled in.

    The first (loopback) listener keeps its port for `broker.runner.render_config` to rewrite.
    `tls_bind` binds the TLS listeners to one address (tests use 127.0.0.1); None keeps them on
    every interface. `loopback_port` moves the first listener (None keeps the template's 1883).
    `websockets=False` leaves out the websockets listener (Mosquitto 2.0.11 built with
    libwebsockets binds it on every interface whatever address its `listener` line names).
    `dynsec_file` loads the dynamic-security plugin (`dynsec_plugin`, else `find_dynsec_plugin()`)
    with that config: it holds only the admin account `edgespec revoke` uses to cut a revoked
    device's live connections (see `write_dynsec_config`). `user` is the account Mosquitto
    switches to when started as root (its default is `mosquitto`); that account must be able to
    read the password, ACL and key files, also on SIGHUP, so pass the files' owner (e.g. the
    current user) when they are mode 0600.
    """
    text = PROD_CONFIG.read_text(encoding="utf-8") if template is None else template
    for key, attr in _PATH_KEYS.items():
        value = str(getattr(files, attr))
        if "\n" in value:
            raise MosquittoFileError(f"{attr} path must not contain a newline")
        if key == "persistence_location" and not value.endswith("/"):
            value += "/"  # Mosquitto concatenates the file name onto it
        text = re.sub(rf"(?m)^{key}\s+.*$", _constant(f"{key} {value}"), text)
    text = _set_listeners(text, {1: mqtts_port, 2: client_cert_port, 3: wss_port}, tls_bind, loopback_port,
                          websockets)
    if user is not None:
        validate_username(user, role="system user")
        text = re.sub(r"(?m)^user\s+.*\n?", "", text)
        text += f"\n# The account to run as when started as root.\nuser {user}\n"
    if dynsec_file is not None:
        plugin = Path(dynsec_plugin) if dynsec_plugin else find_dynsec_plugin()
        if plugin is None:
            raise MosquittoFileError("Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) "
                                     "was not found: install Mosquitto 2.0 with it")
        text += ("\n# Dynamic security: only the admin account `edgespec revoke` uses to cut a revoked device's "
                 "live\n# connections (a kick by username; SIGHUP alone does not drop a client-certificate "
                 "device).\n# Every other account is deferred to password_file and acl_file above.\n"
                 f"plugin {plugin}\nplugin_opt_config_file {dynsec_file}\n")
    return text if text.endswith("\n") else text + "\n"


def write_prod_config(path: str | Path, files: BrokerFiles, *, mqtts_port: int = 8883,
                      client_cert_port: int = 8885, wss_port: int = 8884,
                      tls_bind: str | None = None, user: str | None = None, **options) -> Path:
    """`render_prod_config` written to `path` (mode 0644: it holds paths, not secrets)."""
    text = render_prod_config(files, mqtts_port=mqtts_port, client_cert_port=client_cert_port,
                              wss_port=wss_port, tls_bind=tls_bind, user=user, **options)
    return atomic_write_text(path, text, mode=0o644)


# ---------------------------------------------------------------- dynamic security (kick)

DYNSEC_PLUGIN_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                            "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
                            "/usr/lib/mosquitto_dynamic_security.so",
                            "/usr/local/lib/mosquitto_dynamic_security.so")
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"


def find_dynsec_plugin() -> Path | None:
    """Mosquitto's dynamic-security plugin, where Debian and the eclipse image install it."""
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        if os.path.isfile(candidate):
            return Path(candidate)
    return None


def dynsec_config(admin: str, password: str, *, iterations: int = DEFAULT_ITERATIONS) -> dict:
    """A dynamic-security config with one client, `admin`, allowed only the plugin's control
    topic. Mosquitto 2.0.11 defers every other username to password_file and acl_file."""
    salt = secrets.token_bytes(SALT_LEN)
    digest = hashlib.pbkdf2_hmac("sha512", _check_password(password), salt, iterations)
    control = "$CONTROL/dynamic-security/#"
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": [{"username": _check_user(admin), "textname": "edgespec revoke",
                     "roles": [{"rolename": "edgespec-admin"}],
                     "password": base64.b64encode(digest).decode(),
                     "salt": base64.b64encode(salt).decode(), "iterations": iterations}],
        "groups": [],
        "roles": [{"rolename": "edgespec-admin", "acls": [
            {"acltype": kind, "topic": control, "priority": 0, "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")]}],
    }


def write_dynsec_config(path: str | Path, admin: str, password: str) -> Path:
    """Write `dynsec_config` (mode 0600); the broker rewrites it itself after each change."""
    import json

    path = Path(path)
    with locked(path):
        return atomic_write_text(path, json.dumps(dynsec_config(admin, password), indent=2) + "\n",
                                 mode=FILE_MODE)
