"""Zero-configuration development identity for the loopback development broker.

With no `--config`, `edgespec generate`, `edgespec camera`, `edgespec verifier` and `make demo`
provision themselves here, so payload encryption works on a fresh machine without a single
command. The development broker (`broker/mosquitto-dev.conf`) needs no broker credentials, so
these bundles hold none: only the device key pairs and the verifier's key ring.

    HOME = $EDGESPEC_HOME, else ~/.edgespec/dev            (mode 0700)
      verifier/                 the verifier key ring, created once
      devices/<id>.pub          each device's public key (the FleetRegistry)
      bundles/<id>/             each device's bundle (DeviceBundle.save), created on first use

Every call is idempotent and holds `HOME/.lock` while it creates anything, so a verifier and
several cameras starting at the same moment (as `make demo` does) agree on one key ring and
one key per device.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from schemas.topics import PROTOCOL
from security.bundle import CONFIG_NAME, BundleError, DeviceBundle
from security.ids import validate_device_id, validate_topic_prefix
from security.keys import VerifierKeyRing, generate_keypair, key_id, public_key_to_b64
from security.registry import FleetRegistry

HOME_ENV = "EDGESPEC_HOME"
DEFAULT_HOME = Path("~/.edgespec/dev")
BUNDLES_DIR = "bundles"
DEV_BROKER_URL = "mqtt://127.0.0.1:1883"
DEV_PREFIX = PROTOCOL


class DevIdentityError(ValueError):
    """The development home holds something this module did not make; the message says what."""


def default_home() -> Path:
    """`$EDGESPEC_HOME`, else `~/.edgespec/dev`."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else DEFAULT_HOME.expanduser()


def _resolve(home: str | Path | None) -> Path:
    return default_home() if home is None else Path(home).expanduser()


def bundle_dir(home: str | Path | None, device_id: str) -> Path:
    """Where the development bundle of `device_id` lives."""
    return _resolve(home) / BUNDLES_DIR / validate_device_id(device_id)


def _ring_locked(registry: FleetRegistry) -> VerifierKeyRing:
    if registry.has_verifier_keys():
        return registry.verifier_keys()
    ring = VerifierKeyRing(generate_keypair())
    registry.save_verifier_keys(ring)
    return ring


def ensure_verifier_keys(home: str | Path | None = None) -> VerifierKeyRing:
    """The development verifier key ring, created on first use."""
    registry = FleetRegistry(_resolve(home))
    if registry.has_verifier_keys():
        return registry.verifier_keys()
    with registry.locked():
        return _ring_locked(registry)


def ensure_dev_identity(home: str | Path | None = None, device_id: str = "dev-1", *,
                        broker_url: str = DEV_BROKER_URL,
                        prefix: str = DEV_PREFIX) -> tuple[DeviceBundle, FleetRegistry]:
    """The development bundle of `device_id` (made on first use) and the registry holding it.

    The device key is made once and kept; the bundle is rewritten when the broker URL, prefix
    or the verifier's public keys (after `edgespec keys rotate --home HOME`) changed.
    """
    validate_device_id(device_id)
    validate_topic_prefix(prefix)
    registry = FleetRegistry(_resolve(home))
    where = bundle_dir(registry.home, device_id)
    with registry.locked():
        ring = _ring_locked(registry)
        registered = registry.public_key(device_id)
        saved = (where / CONFIG_NAME).is_file()
        if saved:
            try:
                bundle = DeviceBundle.load(where)
            except BundleError as exc:
                raise DevIdentityError(
                    f"the development bundle of {device_id!r} is damaged ({exc}); delete {where} "
                    "to make a new one") from None
        elif registered is not None:
            raise DevIdentityError(
                f"device {device_id!r} is registered in {registry.home} but has no development "
                "bundle (it was provisioned with `edgespec flash`): pass that bundle with "
                "--config, or choose another device id")
        else:
            bundle = DeviceBundle(device_id=device_id, broker_url=broker_url, prefix=prefix,
                                  device_key=generate_keypair(),
                                  verifier_keys=_b64_keys(ring),
                                  verifier_key_id=ring.current_key_id)
        if registered is None:
            registry.add(device_id, bundle.device_key.public_bytes)
        elif key_id(registered) != bundle.device_key.key_id:
            raise DevIdentityError(
                f"device {device_id!r} is registered in {registry.home} with key "
                f"{key_id(registered)}, but its development bundle holds key "
                f"{bundle.device_key.key_id} (it was re-flashed): delete {where} and run "
                f"`edgespec revoke {device_id} --home {registry.home}` to start over")
        current = replace(bundle, broker_url=broker_url, prefix=prefix, topics={},
                          verifier_keys=_b64_keys(ring), verifier_key_id=ring.current_key_id)
        if not saved or current != bundle:
            bundle = current.save(where)
        return bundle, registry


def _b64_keys(ring: VerifierKeyRing) -> dict[str, str]:
    return {kid: public_key_to_b64(raw) for kid, raw in ring.public_keys().items()}
