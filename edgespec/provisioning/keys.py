"""`edgespec keys init|rotate|retire|list`: the verifier's key ring in the fleet home."""

from __future__ import annotations

import argparse

from security.keys import VerifierKeyRing, generate_keypair, public_key_to_b64
from security.registry import FleetRegistry

from .common import ProvisioningError, _command, _home, _say

# ---------------------------------------------------------------- keys


def _ring_line(ring: VerifierKeyRing) -> str:
    previous = ring.key_ids()[1:]
    return f"current {ring.current_key_id}, previous {previous if previous else 'none'}"


@_command("keys init")
def cmd_keys_init(args: argparse.Namespace) -> int:
    registry = FleetRegistry(_home(args))
    with registry.locked():
        if registry.has_verifier_keys() and not args.force:
            raise ProvisioningError(
                f"a verifier key ring exists in {registry.verifier_dir} "
                f"({_ring_line(registry.verifier_keys())}): use `edgespec keys rotate`, or "
                "--force to replace it (every device must then be re-flashed)")
        ring = VerifierKeyRing(generate_keypair())
        registry.save_verifier_keys(ring)
    _say(f"verifier key ring in {registry.verifier_dir}: {_ring_line(ring)}")
    return 0


@_command("keys rotate")
def cmd_keys_rotate(args: argparse.Namespace) -> int:
    registry = FleetRegistry(_home(args))
    with registry.locked():
        before = registry.verifier_keys()
        ring = VerifierKeyRing(before.current,
                               [before.get(k) for k in reversed(before.key_ids()[1:])],
                               max_previous=args.max_previous)
        held = set(ring.key_ids())
        ring.rotate()
        registry.save_verifier_keys(ring)
    dropped = sorted(held - set(ring.key_ids()))
    _say(f"rotated the verifier key in {registry.verifier_dir}: {_ring_line(ring)}"
         + (f"; dropped {dropped}" if dropped else ""),
         "running sessions keep their key; restart or reload verifiers, then re-flash devices "
         "(or refresh their bundles) so new sessions use the new key")
    return 0


@_command("keys retire")
def cmd_keys_retire(args: argparse.Namespace) -> int:
    registry = FleetRegistry(_home(args))
    with registry.locked():
        ring = registry.verifier_keys()
        try:
            ring.retire(args.key_id)
        except ValueError as exc:
            raise ProvisioningError(str(exc)) from None
        registry.save_verifier_keys(ring)
    _say(f"retired verifier key {args.key_id}: {_ring_line(ring)}")
    return 0


@_command("keys list")
def cmd_keys_list(args: argparse.Namespace) -> int:
    registry = FleetRegistry(_home(args))
    ring = registry.verifier_keys()
    for kid, raw in ring.public_keys().items():
        role = "current " if kid == ring.current_key_id else "previous"
        _say(f"{role} {kid} {public_key_to_b64(raw)}")
    _say(f"{len(registry.devices())} devices registered in {registry.home}")
    return 0
