"""Who a node is and which keys it uses, from flags: a provisioning bundle (`--config`), or
with no configuration the local development identity (security/dev_identity.py) so that
`make demo` and `edgespec generate` work on loopback with nothing set up."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from edgespec.config import DEFAULTS
from transport.urls import BrokerAddress, ClientAuth


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    broker: str
    prefix: str
    auth: ClientAuth
    keys: object | None  # security.channel.DeviceKeys; None: plaintext sessions


def add_client_auth_args(p: argparse.ArgumentParser, *, broker_dir: bool = False) -> None:
    """Broker credentials as flags, so no password goes in a URL (visible in `ps`, shell history
    and, before, in the node's own output)."""
    g = p.add_argument_group("broker credentials")
    g.add_argument("--username", help="broker username")
    g.add_argument("--password-file", metavar="FILE", help="file holding the broker password (first line)")
    g.add_argument("--ca-file", metavar="FILE",
                   help="CA certificate to verify an mqtts:// broker with (e.g. the project CA, ca.crt)")
    g.add_argument("--cert", metavar="FILE", help="client certificate (PEM), for a client-certificate listener")
    g.add_argument("--key", metavar="FILE", help="the client certificate's private key (PEM)")
    if broker_dir:
        g.add_argument("--broker-dir", metavar="DIR",
                       help="a broker folder from `edgespec broker-files init` on this host: the username is "
                            "--verifier-id, the password credentials/<id>.password, the CA its ca.crt")


def client_auth_from_args(args: argparse.Namespace, base: ClientAuth = ClientAuth(), *,
                          account: str | None = None) -> ClientAuth:
    """`base` (a bundle's credentials, or none) with the credential flags laid over it. With
    --broker-dir, `account`'s password and the folder's CA fill what the flags leave out."""
    from dataclasses import replace
    from pathlib import Path

    auth = base
    broker_dir = getattr(args, "broker_dir", None)
    if broker_dir:
        d = Path(broker_dir)
        if not (d / "broker.json").is_file():
            raise ValueError(f"--broker-dir {d} is not a broker folder (no broker.json): "
                             "see `edgespec broker-files init`")
        cred = d / "credentials" / f"{account}.password"
        if not cred.is_file():
            raise ValueError(f"no password for {account!r} in {d / 'credentials'}: is it one of the broker's "
                             "accounts (`broker-files init --verifier NAME`)?")
        auth = replace(auth, username=account, password=_read_secret(cred, "password"),
                       ca_file=str(d / "ca.crt"))
    for flag in ("ca_file", "cert", "key"):
        path = getattr(args, flag, None)
        if path and not Path(path).is_file():
            raise ValueError(f"--{flag.replace('_', '-')} {path}: no such file")
    if getattr(args, "username", None):
        auth = replace(auth, username=args.username)
    if getattr(args, "password_file", None):
        auth = replace(auth, password=_read_secret(Path(args.password_file), "--password-file"))
    if getattr(args, "ca_file", None):
        auth = replace(auth, ca_file=args.ca_file)
    if getattr(args, "cert", None) or getattr(args, "key", None):
        if not (args.cert and args.key):
            raise ValueError("--cert and --key go together")
        auth = replace(auth, cert_file=args.cert, key_file=args.key)
    return auth


def _read_secret(path, what: str) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror}") from None
    if not lines or not lines[0].strip():
        raise ValueError(f"{what} {path} is empty")
    return lines[0].strip()


def warn_password_in_url(url: str) -> None:
    if BrokerAddress.parse(url).password:
        import sys

        print("edgespec: warning: a password in the broker URL is visible to other users (ps, shell history); "
              "use --username and --password-file", file=sys.stderr, flush=True)


def add_device_identity_args(p: argparse.ArgumentParser, *, device_id_default: str | None) -> None:
    p.add_argument("--config", metavar="DIR", help="a provisioning bundle from `edgespec flash`")
    p.add_argument("--device-id", default=device_id_default, help="device id (from the bundle with --config)")
    p.add_argument("--home", metavar="DIR", help="development identity folder (env EDGESPEC_HOME)")
    p.add_argument("--plaintext", action="store_true", help="send sessions unencrypted (the verifier must allow it)")


def resolve_device(args: argparse.Namespace) -> DeviceIdentity:
    from security.bundle import DeviceBundle
    from security.channel import DeviceKeys
    from security.dev_identity import ensure_dev_identity

    if args.config:
        bundle = DeviceBundle.load(args.config)
        keys = None if args.plaintext else DeviceKeys.from_bundle(bundle)
        return DeviceIdentity(bundle.device_id, args.broker or bundle.broker_url, bundle.prefix,
                              client_auth_from_args(args, bundle.client_auth()), keys)
    if not args.device_id:
        raise ValueError("give --device-id, or --config with a provisioning bundle")
    broker, prefix = args.broker or DEFAULTS.broker, args.prefix or DEFAULTS.prefix
    auth = client_auth_from_args(args)
    if args.plaintext:
        return DeviceIdentity(args.device_id, broker, prefix, auth, None)
    bundle, _ = ensure_dev_identity(args.home, args.device_id, broker_url=broker, prefix=prefix)
    return DeviceIdentity(args.device_id, broker, prefix, auth, DeviceKeys.from_bundle(bundle))


def resolve_verifier_crypto(args: argparse.Namespace):
    """VerifierCrypto over the fleet registry in --home (the development home by default)."""
    from security.dev_identity import ensure_verifier_keys
    from security.registry import FleetRegistry
    from verifier_node.core import VerifierCrypto

    registry = FleetRegistry(args.home) if args.home else None
    if registry is None:
        ensure_verifier_keys(None)
        from security.dev_identity import default_home

        registry = FleetRegistry(default_home())
    elif not registry.has_verifier_keys():
        raise ValueError(f"no verifier keys in {args.home}: run `edgespec keys init --home {args.home}`")
    from security.freshness import OpenFreshness

    # Seen sealed OPENs, kept across restarts and shared by the verifiers given this home.
    freshness = OpenFreshness(registry.home / "replay" / "opens.log")
    return VerifierCrypto(registry, require=not args.allow_plaintext, freshness=freshness)
