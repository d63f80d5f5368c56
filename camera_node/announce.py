"""Publishes a camera's home-automation topics through its device link.

:class:`CameraAnnouncer` is the ``announce`` hook of :func:`camera_node.node.run_camera`: the
camera calls it when it connects, when motion starts, when an event ends and when the event's
caption is done, and it publishes what :mod:`camera_node.integrations` builds (state, Frigate-
style events and descriptions, Home Assistant discovery). Availability is the link's own
retained status topic with its Last Will.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from dataclasses import replace
from importlib import metadata
from typing import Any

from . import integrations as ha
from .integrations import CameraState, EventRecord

log = logging.getLogger("edgespec.camera")
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def _package_version() -> str:
    """The installed edgespec distribution's version ("unknown" when run from an uninstalled
    checkout)."""
    try:
        return metadata.version("edgespec")
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = _package_version()


def _suffix() -> str:
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(6))


class CameraAnnouncer:
    """State, events, captions and Home Assistant discovery for one camera's run."""

    def __init__(self, *, ha_discovery: bool = True, ha_prefix: str = ha.HA_DEFAULT_PREFIX,
                 sw_version: str = __version__, clock=time.time):
        self.ha_discovery = ha_discovery
        self.ha_prefix = ha.check_ha_prefix(ha_prefix)
        self.sw_version = sw_version
        self.clock = clock
        self.state = CameraState()
        self.discovery_sent = 0  # times the discovery config was published
        self.skipped = 0  # announcements not sent while the link was down
        self.link: Any = None  # the EdgeLink and CameraRun, from attach()
        self.run: Any = None
        self._open: EventRecord | None = None  # the event being watched or captioned
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------ hooks run_camera calls

    async def attach(self, link, run) -> None:
        """The link is connected: follow Home Assistant's status, send discovery and the state."""
        self.link, self.run = link, run
        if self.ha_discovery:
            await link.follow(ha.ha_status_topic(self.ha_prefix), self._ha_status)
            await self.publish_discovery()
        await self._publish_state("idle")

    async def motion(self) -> None:
        """Motion is under way (called on each frame of an event): a `new` event the first time."""
        if self._open is None:
            await self._start_event()

    async def event_ended(self, event, number: int, facts) -> None:
        """Motion stopped: an `update` with what was measured; `captioning` when it will be captioned."""
        record = self._open
        if record is None:  # an event the camera did not see start (e.g. no frame-by-frame hook)
            record = await self._start_event()
        before = replace(record, objects=list(record.objects))
        record.end_time = self.clock()
        record.frames = event.frame_count
        record.peak_area = round(float(event.peak_area), 4)
        record.ended_by = event.reason.value
        if facts:
            record.objects = [{"kind": f.kind, "colour": f.colour, "direction": f.direction} for f in facts]
            record.label = facts[0].kind
        record.captioning = facts is None or bool(facts)
        await self._publish(ha.event_message(self.link.topics, self.link.device_id, "update", record, before))
        await self._publish_state("captioning" if record.captioning else "idle")

    async def event_done(self, caption) -> None:
        """The event is finished: its description (when captioned), then `end`."""
        record = self._open
        if record is None:
            return
        before = replace(record, objects=list(record.objects))
        record.captioning = False
        if caption is not None:
            record.description = caption.text
            extra = {"objects": caption.objects, "acceptance": round(caption.acceptance_rate, 4),
                     "rounds": caption.rounds}
            session = getattr(caption, "session", None)
            if session is not None:
                extra["session_id"] = session.session_id.hex()
            await self._publish(ha.description_message(self.link.topics, self.link.device_id, record, caption.text,
                                                       extra))
            self._note_caption(caption, record)
        await self._publish(ha.event_message(self.link.topics, self.link.device_id, "end", record, before))
        self._open = None
        await self._publish_state("idle")

    async def detach(self) -> None:
        """Before the link closes: let a discovery re-send in flight finish, and leave the
        retained state idle (a camera stopped in the middle of an event is not in motion)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.link.timeout_s if self.link else 5.0)
        if self.link is not None and self.state.status != "idle":
            self._open = None
            try:
                await self._publish_state("idle")
            except Exception as exc:  # noqa: BLE001 (the link may be gone already; the Last Will says offline)
                log.warning("final idle state not published: %s", exc)

    # ------------------------------------------------------------ publishing

    async def publish_discovery(self) -> None:
        await self._publish(ha.discovery_message(self.link.topics, self.link.device_id, self.ha_prefix,
                                                 self.sw_version))
        self.discovery_sent += 1

    def _ha_status(self, payload: bytes) -> None:
        """Home Assistant (re)started: send discovery again (runs in the link's read callback)."""
        if payload.strip().lower() != b"online":
            return
        task = asyncio.ensure_future(self.publish_discovery())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("Home Assistant discovery not re-sent: %s", task.exception())

    async def _start_event(self) -> EventRecord:
        record = self._open = EventRecord(id=ha.event_id(self.clock(), _suffix()), camera=self.link.device_id,
                                          start_time=self.clock())
        self.state.last_event_id = record.id
        await self._publish(ha.event_message(self.link.topics, self.link.device_id, "new", record))
        await self._publish_state("motion")
        return record

    def _note_caption(self, caption, record: EventRecord) -> None:
        state = self.state
        state.last_caption, state.last_caption_at = caption.text, self.clock()
        state.last_caption_objects = list(caption.objects)
        state.acceptance = caption.acceptance_rate
        session = getattr(caption, "session", None)
        if session is not None and session.result.seconds > 0:
            state.tokens_per_s = len(session.result.token_ids) / session.result.seconds
        elif caption.seconds > 0:  # rounds x (accepted + the verifier's token)
            state.tokens_per_s = caption.rounds * (caption.mean_accepted + 1) / caption.seconds
        state.last_event_id = record.id

    async def _publish_state(self, status: str) -> None:
        state, run = self.state, self.run
        state.status = status
        if run is not None:
            state.frames, state.events, state.captions = run.frames, run.events, len(run.captions)
            state.bytes_sent = sum(c.bytes_up + c.bytes_down for c in run.captions)
            state.jpeg_bytes = sum(c.jpeg_bytes_keyframes for c in run.captions)
        await self._publish(ha.state_message(self.link.topics, self.link.device_id, state))

    async def _publish(self, message: ha.Message) -> None:
        topic, payload, retain = message
        if not getattr(self.link, "connected", True):
            # The link is down: the camera captions on without waiting for it; the next state
            # published once it is back says where things stand.
            self.skipped += 1
            return
        await self.link.publish(topic, payload, retain=retain)
