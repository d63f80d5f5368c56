"""The topic layout, the protocol's name and the id rule. The device id is always one whole
topic level, so broker ACL patterns such as `pattern read edgespec/v1/dev/%u/down` isolate
devices.

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
# The id rule for devices, verifiers and broker accounts (security/ids.py explains each refusal).
MAX_ID_LEN = 64
ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_ID_LEN - 1}}}")

# The layout: each topic's name -> (area, leaf), the topic being `{prefix}/{area}/{id}/{leaf}`
# (`id` a device's in area `dev`, a verifier's in area `verifier`). `Topics` and the broker ACL
# (security/acl.py) both build every topic and pattern from it.
LAYOUT: dict[str, tuple[str, str]] = {
    "open": ("dev", "up/open"),
    "session_up": ("dev", "up/v/{verifier}"),
    "uplinks": ("dev", "up/#"),
    "down": ("dev", "down"),
    "result": ("dev", "result"),
    "verified": ("dev", "verified"),
    "device_status": ("dev", "status"),
    "device_state": ("dev", "state"),
    "device_events": ("dev", "events"),
    "device_description": ("dev", "tracked_object_update"),
    "device_all": ("dev", "#"),
    "verifier_status": ("verifier", "status"),
    "verifier_stats": ("verifier", "stats"),
}


def check_id(value: str, what: str = "device id") -> str:
    """A device or verifier id that is safe as one topic level (no + # / or control chars)."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise WireError(
            ErrorCode.BAD_TOPIC,
            f"{what} {value!r} must be 1-{MAX_ID_LEN} characters of letters, digits, '_', '.', '-', "
            "starting alphanumeric",
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

    def pattern(self, name: str, owner: str, verifier: str = "+") -> str:
        """Topic `name` of the layout for `owner` (and `verifier`), taken as given: ids checked
        by the caller, or a wildcard or ACL placeholder ('+', '%u')."""
        area, leaf = LAYOUT[name]
        return f"{self.prefix}/{area}/{owner}/{leaf.format(verifier=verifier)}"

    def _device(self, name: str, device: str) -> str:
        """Topic `name` of one device, its id checked as one topic level."""
        return self.pattern(name, check_id(device))

    def open(self, device: str) -> str:
        return self._device("open", device)

    def session_up(self, device: str, verifier: str) -> str:
        return self.pattern("session_up", check_id(device), check_id(verifier, "verifier id"))

    def down(self, device: str) -> str:
        return self._device("down", device)

    def result(self, device: str) -> str:
        return self._device("result", device)

    def verified(self, device: str) -> str:
        """What a verifier verified of the device's finished session (only verifiers write it)."""
        return self._device("verified", device)

    def device_status(self, device: str) -> str:
        return self._device("device_status", device)

    def device_state(self, device: str) -> str:
        """The camera's retained state JSON (status, last event and caption, counters)."""
        return self._device("device_state", device)

    def device_events(self, device: str) -> str:
        """Frigate-style event messages (`new` / `update` / `end`), not retained."""
        return self._device("device_events", device)

    def device_description(self, device: str) -> str:
        """An event's caption, like Frigate's `tracked_object_update` description."""
        return self._device("device_description", device)

    def verifier_status(self, verifier: str) -> str:
        return self.pattern("verifier_status", check_id(verifier, "verifier id"))

    def verifier_stats(self, verifier: str) -> str:
        """A verifier's JSON counters, every few seconds (not retained)."""
        return self.pattern("verifier_stats", check_id(verifier, "verifier id"))

    # Subscriptions --------------------------------------------------------

    def open_subscription(self, share_group: str | None = "verifiers") -> str:
        """Session opens from every device; a shared subscription spreads them over a pool."""
        topic = self.pattern("open", "+")
        return f"$share/{check_id(share_group, 'share group')}/{topic}" if share_group else topic

    def session_subscription(self, verifier: str) -> str:
        return self.pattern("session_up", "+", check_id(verifier, "verifier id"))

    def all_verifier_status(self) -> str:
        return self.pattern("verifier_status", "+")

    def all_verifier_stats(self) -> str:
        return self.pattern("verifier_stats", "+")

    def all_results(self) -> str:
        return self.pattern("result", "+")

    # Parsing ---------------------------------------------------------------

    def parse_uplink(self, topic: str) -> Uplink:
        """Which device sent this, and to whom; `WireError(BAD_TOPIC)` for anything else."""
        head = f"{self.prefix}/{LAYOUT['open'][0]}/"
        if not topic.startswith(head):
            raise WireError(ErrorCode.BAD_TOPIC, f"topic {topic!r} is not under {head}")
        levels = topic[len(head):].split("/")
        if topic == self.pattern("open", levels[0]):
            return Uplink(check_id(levels[0]), "open")
        if topic == self.pattern("session_up", levels[0], levels[-1]):
            return Uplink(check_id(levels[0]), "session", check_id(levels[-1], "verifier id"))
        raise WireError(ErrorCode.BAD_TOPIC, f"topic {topic!r} is not an uplink topic")

    def parse_status(self, topic: str) -> tuple[str, str] | None:
        """('dev' | 'verifier', id) for a status topic, else None."""
        levels = topic[len(self.prefix) + 1:].split("/") if topic.startswith(self.prefix + "/") else []
        if len(levels) == 3 and topic in (self.pattern("device_status", levels[1]),
                                          self.pattern("verifier_status", levels[1])):
            return levels[0], levels[1]
        return None
