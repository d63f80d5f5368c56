"""Who a node is and which keys it uses, from flags: a provisioning bundle (`--config`), or
with no configuration the local development identity (security/dev_identity.py) so that
`make demo` and `edgespec generate` work on loopback with nothing set up."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from edgespec.config import DEFAULTS
from edgespec.mqtt import ClientAuth


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    broker: str
    prefix: str
    auth: ClientAuth
    keys: object | None  # security.channel.DeviceKeys; None: plaintext sessions


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
                              bundle.client_auth(), keys)
    if not args.device_id:
        raise ValueError("give --device-id, or --config with a provisioning bundle")
    broker, prefix = args.broker or DEFAULTS.broker, args.prefix or DEFAULTS.prefix
    if args.plaintext:
        return DeviceIdentity(args.device_id, broker, prefix, ClientAuth(), None)
    bundle, _ = ensure_dev_identity(args.home, args.device_id, broker_url=broker, prefix=prefix)
    return DeviceIdentity(args.device_id, broker, prefix, ClientAuth(), DeviceKeys.from_bundle(bundle))


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
