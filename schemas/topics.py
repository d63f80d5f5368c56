"""The topic layout. The device id is always one whole topic level, so broker ACL patterns
such as `pattern read edgespec/v1/dev/%u/down` isolate devices.

    {p}/dev/{device}/up/open            device -> verifier pool (shared subscription)
    {p}/dev/{device}/up/v/{verifier}    device -> the verifier holding its session
    {p}/dev/{device}/down               verifier -> device
    {p}/dev/{device}/result             device -> dashboards (JSON, not retained): its claim
    {p}/dev/{device}/verified           verifier -> dashboards (JSON): what the verifier verified
    {p}/dev/{device}/status             retained Last Will: "online" / "offline"
    {p}/dev/{device}/state              device -> home automation (retained JSON: idle/motion/captioning)
    {p}/dev/{device}/events             device -> home automation (Frigate-style new/update/end)
    {p}/dev/{device}/tracked_object_update  device -> home automation (an event's caption)
    {p}/verifier/{verifier}/status      retained Last Will: "online" / "offline"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ErrorCode, WireError

PROTOCOL_VERSION = 1  # the first field of every session message; `v` of every result
PROTOCOL = f"edgespec/v{PROTOCOL_VERSION}"  # the default topic prefix and the protocol's name in labels
DEFAULT_PREFIX = PROTOCOL
ONLINE = b"online"
OFFLINE = b"offline"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_id(value: str, what: str = "device id") -> str:
    """A device or verifier id that is safe as one topic level (no + # / or control chars)."""
    if not isinstance(value, str) or not _ID.match(value):
        raise WireError(
            ErrorCode.BAD_TOPIC,
            f"{what} {value!r} must be 1-64 characters of letters, digits, '_', '.', '-', starting alphanumeric",
        )
    return value


@dataclass(frozen=True)
class Uplink:
    """A parsed uplink topic."""

    device_id: str
    kind: str  # "open" or "session"
    verifier_id: str | None = None


@dataclass(frozen=True)
class Topics:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "+#\0") or self.prefix.startswith(("/", "$")) \
                or self.prefix.endswith("/"):
            raise ValueError(f"topic prefix {self.prefix!r} must be a plain topic path without wildcards")

    def _device(self, device: str, leaf: str) -> str:
        """``{prefix}/dev/{device}/{leaf}``, the device id checked as one topic level."""
        return f"{self.prefix}/dev/{check_id(device)}/{leaf}"

    def open(self, device: str) -> str:
        return self._device(device, "up/open")

    def session_up(self, device: str, verifier: str) -> str:
        return self._device(device, f"up/v/{check_id(verifier, 'verifier id')}")

    def down(self, device: str) -> str:
        return self._device(device, "down")

    def result(self, device: str) -> str:
        return self._device(device, "result")

    def verified(self, device: str) -> str:
        """What a verifier verified of the device's finished session (only verifiers write it)."""
        return self._device(device, "verified")

    def device_status(self, device: str) -> str:
        return self._device(device, "status")

    def device_state(self, device: str) -> str:
        """The camera's retained state JSON (status, last event and caption, counters)."""
        return self._device(device, "state")

    def device_events(self, device: str) -> str:
        """Frigate-style event messages (`new` / `update` / `end`), not retained."""
        return self._device(device, "events")

    def device_description(self, device: str) -> str:
        """An event's caption, like Frigate's `tracked_object_update` description."""
        return self._device(device, "tracked_object_update")

    def verifier_status(self, verifier: str) -> str:
        return f"{self.prefix}/verifier/{check_id(verifier, 'verifier id')}/status"

    def verifier_stats(self, verifier: str) -> str:
        """A verifier's JSON counters, every few seconds (not retained)."""
        return f"{self.prefix}/verifier/{check_id(verifier, 'verifier id')}/stats"

    # Subscriptions --------------------------------------------------------

    def open_subscription(self, share_group: str | None = "verifiers") -> str:
        """Session opens from every device; a shared subscription spreads them over a pool."""
        topic = f"{self.prefix}/dev/+/up/open"
        return f"$share/{check_id(share_group, 'share group')}/{topic}" if share_group else topic

    def session_subscription(self, verifier: str) -> str:
        return f"{self.prefix}/dev/+/up/v/{check_id(verifier, 'verifier id')}"

    def all_verifier_status(self) -> str:
        return f"{self.prefix}/verifier/+/status"

    def all_verifier_stats(self) -> str:
        return f"{self.prefix}/verifier/+/stats"

    def all_results(self) -> str:
        return f"{self.prefix}/dev/+/result"

    # Parsing ---------------------------------------------------------------

    def parse_uplink(self, topic: str) -> Uplink:
        """Which device sent this, and to whom; `WireError(BAD_TOPIC)` for anything else."""
        head = self.prefix + "/dev/"
        if not topic.startswith(head):
            raise WireError(ErrorCode.BAD_TOPIC, f"topic {topic!r} is not under {head}")
        levels = topic[len(head):].split("/")
        if len(levels) == 3 and levels[1:] == ["up", "open"]:
            return Uplink(check_id(levels[0]), "open")
        if len(levels) == 4 and levels[1:3] == ["up", "v"]:
            return Uplink(check_id(levels[0]), "session", check_id(levels[3], "verifier id"))
        raise WireError(ErrorCode.BAD_TOPIC, f"topic {topic!r} is not an uplink topic")

    def parse_status(self, topic: str) -> tuple[str, str] | None:
        """('dev' | 'verifier', id) for a status topic, else None."""
        levels = topic[len(self.prefix) + 1:].split("/") if topic.startswith(self.prefix + "/") else []
        if len(levels) == 3 and levels[0] in ("dev", "verifier") and levels[2] == "status":
            return levels[0], levels[1]
        return None
