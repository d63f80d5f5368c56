"""`register`, which adds the provisioning commands to the `edgespec` command line, and
`main`, which runs them on their own."""

from __future__ import annotations

import argparse
from typing import Any

from security import ca as ca_mod
from security.mosquitto_files import DEFAULT_PREFIX

from .ca_broker import cmd_broker_files_init, cmd_ca_crl, cmd_ca_init
from .common import DEFAULT_BROKER_DIR, DEFAULT_DASHBOARDS, DEFAULT_VERIFIERS, _add_reload_args
from .devices import cmd_flash, cmd_revoke
from .keys import cmd_keys_init, cmd_keys_list, cmd_keys_retire, cmd_keys_rotate

# ---------------------------------------------------------------- registration


def register(subparsers: Any) -> None:
    """Add `ca`, `broker-files`, `keys`, `flash` and `revoke` to the `edgespec` command line."""
    p = subparsers.add_parser("ca", help="the project's certificate authority")
    ca_sub = p.add_subparsers(dest="ca_command", required=True)
    q = ca_sub.add_parser("init", help="make the CA and the broker's server certificate")
    q.add_argument("--dir", help="CA folder (default $EDGESPEC_HOME/ca, else ~/.edgespec/dev/ca; keep it "
                                 "apart from the broker folder: it holds the CA signing key)")
    q.add_argument("--dns", action="append", default=[], metavar="NAME",
                   help="a DNS name of the broker (repeatable; localhost is always included)")
    q.add_argument("--ip", action="append", default=[], metavar="IP",
                   help="an IP address of the broker (repeatable; 127.0.0.1 is always included)")
    q.add_argument("--force", action="store_true", help="replace an existing CA")
    q.set_defaults(func=cmd_ca_init)
    q = ca_sub.add_parser("crl", help=f"reissue the CRL (it is valid {ca_mod.CRL_DAYS} days)")
    q.add_argument("--dir", help="CA folder (default $EDGESPEC_HOME/ca)")
    q.add_argument("--broker-dir", help="also write it into this broker folder")
    _add_reload_args(q)
    q.set_defaults(func=cmd_ca_crl)

    p = subparsers.add_parser("broker-files", help="a production Mosquitto folder")
    bf_sub = p.add_subparsers(dest="broker_files_command", required=True)
    q = bf_sub.add_parser("init", help="password file, ACL, CRL and mosquitto.conf in one folder")
    q.add_argument("--dir", default=str(DEFAULT_BROKER_DIR), help="the broker folder")
    q.add_argument("--ca-dir", help="where `edgespec ca init` wrote the CA (default: the folder's earlier "
                                    "choice, else $EDGESPEC_HOME/ca)")
    q.add_argument("--verifier", action="append", metavar="NAME",
                   help=f"a verifier account (repeatable; default {DEFAULT_VERIFIERS[0]})")
    q.add_argument("--dashboard", action="append", metavar="NAME",
                   help=f"a dashboard account (repeatable; default {DEFAULT_DASHBOARDS[0]})")
    q.add_argument("--prefix", help=f"topic prefix (default {DEFAULT_PREFIX})")
    q.add_argument("--verifier-writes-results", action="store_true",
                   help="let verifiers publish on <prefix>/dev/+/result")
    q.add_argument("--home-assistant", action="append", metavar="NAME",
                   help="a Home Assistant account: writes <ha-prefix>/status, reads the cameras' topics "
                        "(repeatable; default none)")
    q.add_argument("--ha-prefix", help="Home Assistant discovery prefix devices may write their own config "
                                       "under (default homeassistant)")
    q.add_argument("--mqtts-port", type=int, help="TLS + password listener (default 8883)")
    q.add_argument("--client-cert-port", type=int,
                   help="TLS + client certificate listener (default 8885)")
    q.add_argument("--wss-port", type=int, help="TLS websockets listener (default 8884)")
    q.add_argument("--bind", help="bind the TLS listeners to this address (default: all; the websockets "
                                  "listener ignores it, see --websockets)")
    q.add_argument("--loopback-port", type=int, help="plain MQTT listener on 127.0.0.1 (default 1883)")
    q.add_argument("--websockets", action=argparse.BooleanOptionalAction, default=None,
                   help="open the TLS websockets listener for dashboards (default off; Mosquitto 2.0.11 binds it "
                        "on every interface whatever --bind says)")
    q.add_argument("--user", help="account Mosquitto runs as when started as root (default: `mosquitto` "
                                  "when run as root, which then owns the broker's files; else the current user)")
    _add_reload_args(q)
    q.set_defaults(func=cmd_broker_files_init)

    p = subparsers.add_parser("keys", help="the verifier's key ring (end-to-end encryption)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    for name, func, text in (("init", cmd_keys_init, "make the verifier key ring"),
                             ("rotate", cmd_keys_rotate, "new current key, keep previous ones"),
                             ("list", cmd_keys_list, "key ids and public keys"),
                             ("retire", cmd_keys_retire, "drop a previous key")):
        q = keys_sub.add_parser(name, help=text)
        q.add_argument("--home", help="fleet home (default $EDGESPEC_HOME or ~/.edgespec/dev)")
        if name == "init":
            q.add_argument("--force", action="store_true", help="replace an existing ring")
        if name == "rotate":
            q.add_argument("--max-previous", type=int, default=2,
                           help="previous keys to keep (default 2)")
        if name == "retire":
            q.add_argument("key_id", help="a previous key id (see `keys list`)")
        q.set_defaults(func=func)

    p = subparsers.add_parser("flash", help="provision a device: keys, credentials, bundle")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--out", required=True, help="bundle folder to write (the device's --config)")
    p.add_argument("--broker", required=True,
                   help="broker URL the device uses, e.g. mqtts://broker.example.com:8883")
    p.add_argument("--broker-dir", help="broker folder from `edgespec broker-files init`")
    p.add_argument("--ca-dir", help="CA folder (default: the broker folder's)")
    p.add_argument("--home", help="fleet home (default $EDGESPEC_HOME or ~/.edgespec/dev)")
    p.add_argument("--prefix", help="topic prefix (default: the broker folder's)")
    p.add_argument("--cert", action="store_true",
                   help="authenticate with a client certificate instead of a password")
    p.add_argument("--force", action="store_true", help="re-flash a provisioned device")
    _add_reload_args(p)
    p.set_defaults(func=cmd_flash)

    p = subparsers.add_parser("revoke", help="remove a device: it can no longer connect")
    p.add_argument("device_id", metavar="DEVICE_ID")
    p.add_argument("--broker-dir", help="broker folder from `edgespec broker-files init`")
    p.add_argument("--ca-dir", help="CA folder (default: the broker folder's)")
    p.add_argument("--home", help="fleet home (default $EDGESPEC_HOME or ~/.edgespec/dev)")
    _add_reload_args(p)
    p.set_defaults(func=cmd_revoke)


def main(argv: list[str] | None = None) -> int:
    """These commands on their own: `python -m edgespec.provisioning flash ...`."""
    parser = argparse.ArgumentParser(prog="edgespec", description="fleet provisioning")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
