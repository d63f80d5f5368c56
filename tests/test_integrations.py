"""The home-automation payloads (camera_node/integrations.py): Home Assistant device discovery
against the fields Home Assistant's documentation requires, the state topic's 255-character
cut, Frigate-style events and descriptions."""

from __future__ import annotations

import json

import pytest

from camera_node import integrations as ha
from schemas import Topics

T = Topics("edgespec/v1")

# Home Assistant's MQTT device discovery (homeassistant/device/<id>/config, Home Assistant
# 2024.11+), as its documentation lists what a payload must hold: the device and origin
# mappings, the components, and per component its platform and unique_id; the platforms'
# own required options; an availability entry needs its topic.
REQUIRED_TOP = ("dev", "o", "cmps")
REQUIRED_DEVICE_ONE_OF = ("identifiers", "connections")  # a device needs one of them
REQUIRED_ORIGIN = ("name",)
REQUIRED_COMPONENT = ("p", "unique_id")
REQUIRED_BY_PLATFORM = {"sensor": ("state_topic",), "binary_sensor": ("state_topic",)}
REQUIRED_AVAILABILITY = ("topic",)
# What this project promises on top (schemas/README.md).
PROMISED_DEVICE = ("identifiers", "name", "model", "manufacturer", "sw_version")
PROMISED_ORIGIN = ("name", "sw")
PROMISED_COMPONENTS = {"caption": "sensor", "motion": "binary_sensor", "acceptance": "sensor",
                       "tokens_per_s": "sensor"}


def discovery(device_id: str = "cam-1") -> tuple[str, dict, bool]:
    topic, payload, retain = ha.discovery_message(T, device_id, "homeassistant", "0.1.0")
    return topic, json.loads(payload), retain


def test_discovery_has_every_required_field() -> None:
    topic, body, retain = discovery()
    assert topic == "homeassistant/device/cam-1/config" and retain is True
    for key in REQUIRED_TOP:
        assert key in body, key
    assert any(body["dev"].get(k) for k in REQUIRED_DEVICE_ONE_OF)
    assert isinstance(body["dev"]["identifiers"], list)
    for key in REQUIRED_ORIGIN + PROMISED_ORIGIN:
        assert body["o"].get(key), key
    for key in PROMISED_DEVICE:
        assert body["dev"].get(key), key
    assert body["dev"]["manufacturer"] == "edgespec"
    ids = set()
    for name, component in body["cmps"].items():
        for key in REQUIRED_COMPONENT:
            assert component.get(key), (name, key)
        for key in REQUIRED_BY_PLATFORM[component["p"]]:
            assert component.get(key), (name, key)
        ids.add(component["unique_id"])
    assert len(ids) == len(body["cmps"])  # unique ids are unique
    platforms = {name.removeprefix("cam-1_"): c["p"] for name, c in body["cmps"].items()}
    assert platforms == PROMISED_COMPONENTS
    for entry in body["availability"]:
        for key in REQUIRED_AVAILABILITY:
            assert entry[key] == T.device_status("cam-1")
        assert (entry["payload_available"], entry["payload_not_available"]) == ("online", "offline")


def test_discovery_components_read_the_state_topic() -> None:
    _, body, _ = discovery("cam.2")
    cmps = {name.removeprefix("cam_2_"): c for name, c in body["cmps"].items()}
    assert all(c["state_topic"] == T.device_state("cam.2") for c in cmps.values())
    assert cmps["caption"]["json_attributes_topic"] == T.device_state("cam.2")
    assert cmps["motion"]["device_class"] == "motion"
    assert body["cmps"]["cam_2_caption"]["unique_id"] == "edgespec_cam_2_caption"


def test_state_cuts_the_caption_to_255_characters_and_keeps_it_whole_in_attributes() -> None:
    caption = "a person in a red coat walks left " * 20  # 680 characters
    state = ha.CameraState(status="idle", last_event_id="1.000000-abc123", last_caption=caption,
                           acceptance=0.712, tokens_per_s=31.4159)
    topic, payload, retain = ha.state_message(T, "cam-1", state)
    body = json.loads(payload)
    assert topic == "edgespec/v1/dev/cam-1/state" and retain is True
    assert len(body["last_caption"]) == 255 and caption.startswith(body["last_caption"][:-1])
    assert body["caption_attributes"]["text"] == caption
    assert body["caption_attributes"]["length"] == len(caption)
    assert body["acceptance_percent"] == 71.2 and body["tokens_per_s"] == 31.42
    assert body["motion"] is False and body["status"] == "idle"
    short = json.loads(ha.state_message(T, "cam-1", ha.CameraState(last_caption="a cat"))[1])
    assert short["last_caption"] == "a cat"
    empty = json.loads(ha.state_message(T, "cam-1", ha.CameraState(status="motion"))[1])
    assert empty["motion"] is True and empty["last_caption"] is None and empty["acceptance_percent"] is None
    with pytest.raises(ValueError, match="idle, motion or captioning"):
        ha.state_message(T, "cam-1", ha.CameraState(status="asleep"))


def test_events_and_description_share_the_event_id() -> None:
    record = ha.EventRecord(id=ha.event_id(1700000000.25, "k3x9qa"), camera="cam-1", start_time=1700000000.25)
    assert record.id == "1700000000.250000-k3x9qa"
    topic, payload, retain = ha.event_message(T, "cam-1", "new", record)
    new = json.loads(payload)
    assert topic == "edgespec/v1/dev/cam-1/events" and retain is False
    assert new["type"] == "new" and new["before"] == new["after"] and new["after"]["end_time"] is None
    before = ha.EventRecord(**record.__dict__)
    record.end_time, record.label, record.description = 1700000003.0, "person", "a person walks left"
    end = json.loads(ha.event_message(T, "cam-1", "end", record, before)[1])
    assert end["before"]["end_time"] is None and end["after"]["end_time"] == 1700000003.0
    assert end["after"]["has_description"] is True and end["after"]["has_snapshot"] is False
    topic, payload, retain = ha.description_message(T, "cam-1", record, "a person walks left", {"rounds": 5})
    desc = json.loads(payload)
    assert topic == "edgespec/v1/dev/cam-1/tracked_object_update" and retain is False
    assert desc == {"type": "description", "id": record.id, "camera": "cam-1",
                    "description": "a person walks left", "label": "person", "rounds": 5}
    with pytest.raises(ValueError, match="new, update or end"):
        ha.event_message(T, "cam-1", "started", record)


@pytest.mark.parametrize("bad", ["", "home/+", "home/#", "/home", "home//x", "home assistant"])
def test_bad_ha_prefix_is_refused_in_one_line(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        ha.ha_discovery_topic(bad, "cam-1")
    assert "\n" not in str(err.value)


def test_bad_device_id_is_refused() -> None:
    from schemas import WireError

    with pytest.raises(WireError):
        ha.discovery_message(T, "cam/1", "homeassistant", "0.1.0")
