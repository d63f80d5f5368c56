"""What a camera tells the home-automation world, as pure payload builders.

Every builder here is a function of ids, events and captions that returns a
``(topic, payload, retain)`` tuple (payload: UTF-8 JSON bytes); nothing here talks MQTT.
`camera_node.announce` publishes them through the device's link. The topics (prefix ``P``,
Home Assistant discovery prefix ``H``, default ``homeassistant``):

* ``P/dev/<id>/status``: availability, ``online``/``offline``, retained, with a Last Will
  (the device link, :class:`camera_node.link.EdgeLink`, already keeps it).
* ``P/dev/<id>/state``: retained JSON: ``status`` idle/motion/captioning, ``motion``, the last
  event id and caption (cut to 255 characters; the full text is in ``caption_attributes``),
  counters, the last session's acceptance and tokens per second.
* ``P/dev/<id>/events``: Frigate-style ``{"type": "new"|"update"|"end", "before", "after"}``,
  not retained: ``new`` when motion starts, ``update`` when it stops (objects measured),
  ``end`` when the event is done (with its caption, if any).
* ``P/dev/<id>/tracked_object_update``: the caption of an event, like Frigate's
  ``{"type": "description", "id": <event id>, "description": <caption>}``.
* ``H/device/<id>/config``: Home Assistant MQTT device discovery, retained; re-sent when
  ``H/status`` says ``online``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from schemas import Topics
from schemas.topics import OFFLINE, ONLINE, check_id

HA_DEFAULT_PREFIX = "homeassistant"
HA_STATE_MAX_CHARS = 255  # Home Assistant refuses a state longer than this
MANUFACTURER = "edgespec"
MODEL = "edgespec camera node"
_HA_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")

Message = tuple[str, bytes, bool]  # (topic, payload, retain)


def check_ha_prefix(prefix: str) -> str:
    """A Home Assistant discovery prefix: plain topic levels, no wildcards; ValueError otherwise."""
    if not isinstance(prefix, str) or not _HA_PREFIX.match(prefix):
        raise ValueError(f"Home Assistant prefix {prefix!r} must be plain topic levels "
                         "(letters, digits, '_', '.', '-', separated by '/')")
    return prefix


def ha_discovery_topic(ha_prefix: str, device_id: str) -> str:
    """``<ha_prefix>/device/<id>/config``."""
    return f"{check_ha_prefix(ha_prefix)}/device/{check_id(device_id)}/config"


def ha_status_topic(ha_prefix: str) -> str:
    """Where Home Assistant says ``online`` when it (re)starts: discovery is re-sent then."""
    return f"{check_ha_prefix(ha_prefix)}/status"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def cut_state(text: str, limit: int = HA_STATE_MAX_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters (an ellipsis marks a cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def event_id(wall_time: float, suffix: str) -> str:
    """A Frigate-style event id, ``<unix seconds with microseconds>-<suffix>``."""
    if not suffix or not suffix.isalnum():
        raise ValueError(f"event id suffix {suffix!r} must be letters and digits")
    return f"{wall_time:.6f}-{suffix}"


@dataclass
class EventRecord:
    """One motion event as the events topic shows it (Frigate's event fields where they fit)."""

    id: str
    camera: str
    start_time: float  # Unix seconds
    end_time: float | None = None
    label: str = "motion"  # the first object followed, once measured
    objects: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0
    peak_area: float = 0.0
    ended_by: str | None = None
    captioning: bool = False
    description: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "camera": self.camera, "label": self.label, "start_time": self.start_time,
                "end_time": self.end_time, "objects": list(self.objects), "frames": self.frames,
                "peak_area": self.peak_area, "ended_by": self.ended_by, "captioning": self.captioning,
                "has_description": self.description is not None, "description": self.description,
                "has_clip": False, "has_snapshot": False}  # frames never leave the device


def event_message(topics: Topics, device_id: str, kind: str, after: EventRecord,
                  before: EventRecord | None = None) -> Message:
    """``{"type": kind, "before": ..., "after": ...}`` on the events topic (not retained).
    ``before`` is the event as last announced (``after`` itself for ``new``)."""
    if kind not in ("new", "update", "end"):
        raise ValueError(f"event message type {kind!r} must be new, update or end")
    after_d = after.as_dict()
    body = {"type": kind, "before": after_d if before is None else before.as_dict(), "after": after_d}
    return topics.device_events(device_id), _json(body), False


def description_message(topics: Topics, device_id: str, event: EventRecord, caption: str,
                        extra: dict[str, Any] | None = None) -> Message:
    """The caption of ``event``, linked by its id (Frigate ``tracked_object_update``)."""
    body = {"type": "description", "id": event.id, "camera": device_id, "description": caption,
            "label": event.label, **(extra or {})}
    return topics.device_description(device_id), _json(body), False


@dataclass
class CameraState:
    """What the retained state topic says about one camera."""

    status: str = "idle"  # idle, motion or captioning
    last_event_id: str | None = None
    last_caption: str | None = None  # the full text; the payload cuts it for Home Assistant
    last_caption_at: float | None = None
    last_caption_objects: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0
    events: int = 0
    captions: int = 0
    acceptance: float | None = None  # the last session's accepted / drafted tokens
    tokens_per_s: float | None = None  # the last session's tokens per second
    bytes_sent: int = 0  # on the wire, all sessions
    jpeg_bytes: int = 0  # what the events' JPEG key frames would have cost

    def payload(self) -> dict[str, Any]:
        if self.status not in ("idle", "motion", "captioning"):
            raise ValueError(f"camera status {self.status!r} must be idle, motion or captioning")
        text = self.last_caption
        return {
            "status": self.status, "motion": self.status == "motion",
            "last_event_id": self.last_event_id,
            "last_caption": None if text is None else cut_state(text),
            "last_caption_at": self.last_caption_at,
            "caption_attributes": {"text": text, "length": 0 if text is None else len(text),
                                   "event_id": self.last_event_id, "at": self.last_caption_at,
                                   "objects": list(self.last_caption_objects)},
            "frames": self.frames, "events": self.events, "captions": self.captions,
            "acceptance_percent": None if self.acceptance is None else round(100 * self.acceptance, 1),
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 2),
            "bytes_sent": self.bytes_sent, "jpeg_bytes": self.jpeg_bytes,
        }


def state_message(topics: Topics, device_id: str, state: CameraState) -> Message:
    """The retained state JSON."""
    return topics.device_state(device_id), _json(state.payload()), True


def discovery_payload(topics: Topics, device_id: str, sw_version: str, *, name: str | None = None) -> dict[str, Any]:
    """Home Assistant device discovery for one camera: a caption sensor (state cut to 255
    characters, the full text and its event in the attributes), a motion binary sensor, and
    acceptance and tokens/s sensors, all available while the camera's availability topic
    says ``online``."""
    check_id(device_id)
    state = topics.device_state(device_id)
    uid = device_id.replace(".", "_")

    def component(platform: str, key: str, name: str, **options: Any) -> tuple[str, dict[str, Any]]:
        return f"{uid}_{key}", {"p": platform, "name": name, "unique_id": f"edgespec_{uid}_{key}",
                                "state_topic": state, **options}

    components = dict([
        component("sensor", "caption", "Caption", icon="mdi:text-box-outline",
                  value_template="{{ value_json.last_caption }}",
                  json_attributes_topic=state,
                  json_attributes_template="{{ value_json.caption_attributes | tojson }}"),
        component("binary_sensor", "motion", "Motion", device_class="motion",
                  value_template="{{ 'ON' if value_json.motion else 'OFF' }}", payload_on="ON", payload_off="OFF"),
        component("sensor", "acceptance", "Draft acceptance", unit_of_measurement="%", state_class="measurement",
                  icon="mdi:check-decagram", value_template="{{ value_json.acceptance_percent }}"),
        component("sensor", "tokens_per_s", "Caption tokens per second", unit_of_measurement="tokens/s",
                  state_class="measurement", icon="mdi:speedometer", value_template="{{ value_json.tokens_per_s }}"),
    ])
    return {
        "dev": {"identifiers": [f"edgespec_{uid}"], "name": name or device_id, "model": MODEL,
                "manufacturer": MANUFACTURER, "sw_version": sw_version},
        "o": {"name": "edgespec", "sw": sw_version},
        "cmps": components,
        "availability": [{"topic": topics.device_status(device_id), "payload_available": ONLINE.decode(),
                          "payload_not_available": OFFLINE.decode()}],
        "qos": 1,
    }


def discovery_message(topics: Topics, device_id: str, ha_prefix: str, sw_version: str) -> Message:
    """The retained ``<ha_prefix>/device/<id>/config`` message."""
    return (ha_discovery_topic(ha_prefix, device_id), _json(discovery_payload(topics, device_id, sw_version)), True)
