"""Shared pieces of the provisioning commands: constants, `ProvisioningError`, small file
helpers, Mosquitto reload (SIGHUP) and the command plumbing that turns expected failures into one
`edgespec <command>: error: ...` line."""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from security import ca as ca_mod
from security.bundle import BundleError
from security.dev_identity import DevIdentityError, default_home
from security.ids import InvalidIdentifier, InvalidTopicPrefix
from security.keys import KeyFormatError, UnknownKeyId
from security.mosquitto_files import MosquittoFileError, atomic_write_text
from security.registry import RegistryError

EXIT_USER_ERROR = 2
DEFAULT_BROKER_DIR = Path("broker-files")
BROKER_SETTINGS = "broker.json"
CREDENTIALS_DIR = "credentials"
ISSUED_INDEX = "issued-certs.json"
CONFIG_FILE = "mosquitto.conf"
DEFAULT_VERIFIERS = ("verifier-1",)  # `edgespec verifier`'s default --verifier-id
DEFAULT_DASHBOARDS = ("dashboard",)
DEFAULT_PORTS = {"mqtts_port": 8883, "client_cert_port": 8885, "wss_port": 8884}
DEFAULT_LOOPBACK_PORT = 1883
ADMIN_USER = "edgespec-admin"  # dynamic-security account: cuts revoked devices' connections
DYNSEC_DIR = "dynsec"  # its config, in a folder the broker's account may write (it saves it)


def default_ca_dir() -> Path:
    """`$EDGESPEC_HOME/ca` (else ~/.edgespec/dev/ca): the CA signing key stays out of the broker
    folder unless `--dir`/`--ca-dir` put it there."""
    return default_home() / "ca"


class ProvisioningError(ValueError):
    """A provisioning step that cannot be done as asked; the message says what to do instead."""


# ---------------------------------------------------------------- small file helpers


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProvisioningError(f"{path} ({what}) is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProvisioningError(f"{path} ({what}) must hold a JSON object")
    return doc


def _write_json(path: Path, doc: dict[str, Any], mode: int = 0o644) -> None:
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n", mode=mode)


def _load_ca(ca_dir: Path) -> ca_mod.CertificateAuthority:
    if not (ca_dir / "ca.crt").is_file() or not (ca_dir / "ca.key").is_file():
        raise ProvisioningError(f"no CA in {ca_dir} (ca.crt and ca.key): run "
                                f"`edgespec ca init --dir {ca_dir}` first, or pass --ca-dir")
    return ca_mod.CertificateAuthority.load(ca_dir)


# ---------------------------------------------------------------- reload (SIGHUP)


def _read_pid(pid: int | None, pid_file: str | None) -> int | None:
    if pid_file is not None:
        try:
            text = Path(pid_file).read_text().strip()
            pid = int(text)
        except FileNotFoundError:
            raise ProvisioningError(f"pid file {pid_file} does not exist: is Mosquitto running "
                                    "with `pid_file` set?") from None
        except ValueError:
            raise ProvisioningError(f"pid file {pid_file} does not hold a process id") from None
    if pid is not None and pid <= 1:
        raise ProvisioningError(f"refusing to signal process id {pid}")
    _check_pid(pid)
    return pid


def _check_pid(pid: int | None) -> None:
    """Refuse, before anything changes, a pid that is not a running Mosquitto."""
    if pid is None:
        return
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        raise ProvisioningError(f"no process {pid}: is Mosquitto running? (omit the pid to "
                                "only update the files)") from None
    except OSError:
        return  # no procfs here: os.kill reports a missing process
    if "mosquitto" not in comm:
        raise ProvisioningError(f"process {pid} is {comm!r}, not mosquitto: refusing to send it "
                                "SIGHUP; check --pid / --pid-file")


def _reload(pid: int | None) -> str:
    """SIGHUP Mosquitto (it re-reads passwd, ACL and CRL); a line saying what happened."""
    if pid is None:
        return "send SIGHUP to Mosquitto (`kill -HUP <pid>`) to apply it"
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ProvisioningError(f"no process {pid}: the files are updated and apply at "
                                "Mosquitto's next start or SIGHUP") from None
    except PermissionError:
        raise ProvisioningError(f"not allowed to signal process {pid}: the files are updated; "
                                f"run `kill -HUP {pid}` as its owner") from None
    return f"sent SIGHUP to mosquitto (pid {pid})"


def _add_reload_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mosquitto-pid", "--pid", dest="pid", type=int, metavar="PID",
                       help="send SIGHUP to this Mosquitto process afterwards (reload)")
    group.add_argument("--pid-file", metavar="FILE", help="read Mosquitto's pid from FILE")


# ---------------------------------------------------------------- command plumbing


_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ProvisioningError, BundleError, RegistryError, DevIdentityError, InvalidIdentifier,
    InvalidTopicPrefix, KeyFormatError, UnknownKeyId, ca_mod.CertificateError,
    MosquittoFileError, OSError)


def _command(name: str) -> Callable[[Callable[[argparse.Namespace], int]],
                                    Callable[[argparse.Namespace], int]]:
    """Wrap a handler so that expected failures print one line instead of a traceback."""

    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(fn)
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except _EXPECTED_ERRORS as exc:
                print(f"edgespec {name}: error: {exc}", file=sys.stderr, flush=True)
                return EXIT_USER_ERROR
        return run

    return wrap


def _say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def _home(args: argparse.Namespace) -> Path:
    return Path(args.home).expanduser() if args.home else default_home()
