"""The device's MQTT edge: one connection, per-session channels, request/response with timeouts.

Replies on the device's downlink are routed by session id to their `SessionChannel`
(camera_node/channel.py), so a session waits only for its own verdicts. The connection's
availability (Last Will, `online` once subscribed, `offline` on leaving) and its reconnect
with backoff are transport.presence's, shared with the verifier.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import replace

import aiomqtt

from schemas import ErrorMsg, ResultMsg, Sealed, Topics
from schemas.messages import decode
from schemas.topics import OFFLINE, ONLINE
from transport.client import make_client, routing_queue, settle, until_disconnected
from transport.port import PendingReplies
from transport.presence import Status, reconnect
from transport.publish import publish_now
from transport.retry import RetryPolicy
from transport.urls import ClientAuth

from .channel import Downlink, LinkFailed, Reconnected, SessionChannel, Traffic, VerifierGone
from .errors import BrokerUnreachable, ResyncFailed, VerifierLost, VerifierRejected, VerifierTimeout
from .settings import DEFAULTS

__all__ = ["BrokerUnreachable", "EdgeLink", "ResyncFailed", "SessionChannel", "Traffic", "VerifierLost",
           "VerifierRejected", "VerifierTimeout", "device_retry", "publish_size"]

log = logging.getLogger("edgespec.camera")
DEFAULT_TIMEOUT_S = DEFAULTS.timeout_s
GONE_GRACE_S = 0.5  # how long a verifier's `offline` is given to be taken back (see SessionChannel)
SESSION_EXPIRY_S = 300  # the broker keeps the device's subscription and queued QoS-1 messages
PUBLISH_ATTEMPTS = 2  # a publish whose PUBACK timed out on a live connection is tried once more


def device_retry(*, timeout_s: float = DEFAULTS.timeout_s, reconnect_s: float | None = DEFAULTS.reconnect_s,
                 reopens: int = DEFAULTS.reopens) -> RetryPolicy:
    """The device's one retry policy: `reopens + 1` sends of a message before its session
    fails, `reconnect_s` of reconnecting, `timeout_s` for each reply."""
    return RetryPolicy(attempts=reopens + 1, within_s=reconnect_s, timeout_s=timeout_s)


def publish_size(topic: str, payload: bytes) -> int:
    """Bytes of an MQTT v5 QoS-1 PUBLISH packet (fixed header, topic, packet id, properties)."""
    body = 2 + len(topic.encode()) + 2 + 1 + len(payload)
    length_bytes = 1 if body < 128 else 2 if body < 16384 else 3 if body < 2097152 else 4
    return 1 + length_bytes + body


def _settled(info) -> bool:
    """Whether a publish `send` wrote needs no more waiting for: the broker acknowledged it,
    or it was made while paho saw the connection down (paho then sends it again itself after
    the reconnect, and its info raises instead of answering)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True


class EdgeLink:
    """A device's connection to the broker."""

    def __init__(self, broker_url: str, device_id: str, *, topics: Topics = Topics(),
                 auth: ClientAuth = ClientAuth(), timeout_s: float = DEFAULT_TIMEOUT_S, keys=None,
                 reconnect_s: float | None = DEFAULTS.reconnect_s):
        """`keys` (security.channel.DeviceKeys) encrypts every session end to end; None sends plaintext.

        The link is an MQTT v5 persistent session (clean start off, a session expiry), so a short
        disconnect loses no QoS-1 message; if the connection drops it reconnects for up to
        `reconnect_s` seconds (None: for as long as it runs; a publish then waits `timeout_s` for
        the connection), and sessions waiting for a reply re-open with their full context.
        """
        self.retry = device_retry(timeout_s=timeout_s, reconnect_s=reconnect_s)
        self.reconnects = 0
        self._connected = asyncio.Event()
        self.device_id = device_id
        self.keys = keys
        self.topics = topics
        self.gone_grace_s = GONE_GRACE_S
        self.downlink_topic = topics.down(device_id)  # validates the id
        self.status = Status(topics.device_status(device_id), ONLINE, OFFLINE)
        self._client = make_client(
            broker_url, client_id=f"edgespec-dev-{device_id}", will=self.status.will(), auth=auth,
            clean_start=False, session_expiry_s=SESSION_EXPIRY_S, queue_type=routing_queue(self._route),
        )
        self.replies = PendingReplies()  # each session's awaited reply, by (session id, seq)
        self.verifier_status: dict[str, bytes] = {}  # the latest availability each verifier announced
        self._channels: dict[bytes, SessionChannel] = {}
        self._reader: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()  # publishes not waited for (see `send`)
        self._unacked: collections.deque = collections.deque()  # paho infos of messages `send` wrote
        self.rejected_downlink = 0
        self._followed: dict[str, object] = {}  # topic -> handler(payload), see `follow`

    @property
    def timeout_s(self) -> float:
        return self.retry.timeout_s

    @property
    def reconnect_s(self) -> float:
        """How long a publish waits for a lost connection to come back."""
        return self.retry.within_s if self.retry.within_s is not None else self.timeout_s

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now (it is re-established in the background)."""
        return self._connected.is_set()

    def verifiers_online(self) -> list[str]:
        """The verifiers whose retained status says online."""
        return [vid for vid, status in self.verifier_status.items() if status == ONLINE]

    async def _connect(self) -> None:
        await self._client.__aenter__()
        subscriptions = [self.downlink_topic, self.topics.all_verifier_status(), *self._followed]
        await self.status.go_online(self._client, subscriptions)
        self._connected.set()

    async def __aenter__(self) -> EdgeLink:
        await self._connect()
        self._reader = asyncio.create_task(self._read_forever(), name=f"downlink-{self.device_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s  # for everything still unsent
        if self._sending:
            _, unsent = await asyncio.wait(set(self._sending), timeout=self.timeout_s)
            for task in unsent:  # the broker stayed away: give up on them
                task.cancel()
        while self._connected.is_set() and self._unacked and loop.time() < deadline:
            if _settled(self._unacked[0]):
                self._unacked.popleft()
            else:
                await asyncio.sleep(0.001)  # its PUBACK is on the way
        if self._reader is not None:
            # Ended before the client closes: it reads the client's connection, and its own
            # failure (BrokerUnreachable, already told to every session) is taken here.
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        try:
            if self._connected.is_set() and await self.status.go_offline(self._client):
                await self._client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, OSError):
            pass  # the connection is gone already: nothing left to close cleanly
        finally:
            self._connected.clear()
            settle(self._client)

    async def _read_forever(self) -> None:
        """Read the downlink; on a lost connection, reconnect and wake the waiting sessions."""
        while True:
            try:
                # Messages are routed as they arrive (`_route`); this waits for the connection to drop.
                await until_disconnected(self._client)
            except aiomqtt.MqttError as exc:
                self._connected.clear()
                log.warning("broker connection lost (%s); reconnecting", exc)
                await self._reconnect()
                self.reconnects += 1
                self._notify(Reconnected())

    async def _reconnect(self) -> None:
        try:
            await reconnect(self._client, self._connect, replace(self.retry, attempts=None).tries())
        except aiomqtt.MqttError as exc:
            failed = BrokerUnreachable(f"broker unreachable for {self.reconnect_s:.0f} s: {exc}")
            self._notify(LinkFailed(failed))
            raise failed from None

    def _notify(self, entry) -> None:
        for channel in list(self._channels.values()):
            channel.deliver(entry)

    def _route(self, message: aiomqtt.Message) -> None:
        """Deliver one downlink message to its session's channel (runs in the read callback)."""
        payload = message.payload if isinstance(message.payload, bytes) else b""
        topic = str(message.topic)
        if self._followed and topic in self._followed:
            self._followed[topic](payload)  # type: ignore[operator]
            return
        # The common case first: the downlink topic ({p}/dev/{id}/down) is never a status topic.
        status = None if topic == self.downlink_topic else self.topics.parse_status(topic)
        if status is not None:
            if status[0] == "verifier":
                self.verifier_status[status[1]] = payload
                if payload == OFFLINE:
                    self._verifier_gone(status[1])
            return
        try:
            msg = decode(payload)
        except Exception as err:  # noqa: BLE001 - nothing on the downlink may stop the reader
            self.rejected_downlink += 1
            log.warning("dropped a malformed downlink message: %s", err)
            return
        sid = getattr(msg, "session_id", None)
        channel = self._channels.get(sid) if sid is not None else None
        if channel is not None:
            channel.deliver(Downlink(msg, publish_size(topic, payload)))
        elif isinstance(msg, Sealed):
            self.rejected_downlink += 1  # for no session of ours (a stale reply, or not for us)
        elif isinstance(msg, ErrorMsg):
            log.warning("verifier error for no open session: %s", msg.message)

    async def follow(self, topic: str, handler) -> None:
        """Subscribe to one exact `topic` (no wildcards) beside the downlink, now and after every
        reconnect; `handler(payload)` runs in the read callback for each message, so it must not
        block (schedule a task for any publishing). For topics outside the session protocol,
        such as Home Assistant's `homeassistant/status`."""
        if any(c in topic for c in "+#"):
            raise ValueError(f"follow() takes an exact topic, not {topic!r}")
        self._followed[topic] = handler
        if self._connected.is_set():
            await self._client.subscribe(topic, qos=1)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Publish, waiting for a reconnect first when the connection is down."""
        tries = replace(self.retry, attempts=PUBLISH_ATTEMPTS, backoff=self.retry.backoff[:1]).tries()
        while True:
            if not self._connected.is_set():
                try:
                    await asyncio.wait_for(self._connected.wait(), self.reconnect_s)
                except asyncio.TimeoutError:
                    raise BrokerUnreachable(f"no broker connection for {self.reconnect_s:.0f} s") from None
            try:
                await self._client.publish(topic, payload, qos=qos, retain=retain)
                return publish_size(topic, payload)
            except aiomqtt.MqttError:
                if tries.exhausted():
                    raise
                # A lost connection is the reader's to notice (it clears `_connected` and
                # reconnects, and the retry waits for that); a PUBACK that timed out on a live
                # one is simply retried.
                await tries.wait()

    def send(self, topic: str, payload: bytes) -> int:
        """Publish (QoS 1) without waiting for the broker's PUBACK: for messages whose answer
        is awaited anyway (a reply proves delivery, and a lost one is handled by its timeout
        and re-open), and for the CLOSE. The link waits for these before it disconnects.

        On a live connection the message is on the socket when this returns, so the draft
        forwards that follow do not hold it back; otherwise a task waits for the reconnect."""
        if self._connected.is_set():
            # Written now; or, if paho saw the connection drop before the reader did, kept by
            # paho and sent on the reconnect (publishing it again would send it twice).
            info = publish_now(self._client, topic, payload)
            while self._unacked and _settled(self._unacked[0]):
                self._unacked.popleft()
            self._unacked.append(info)
            return publish_size(topic, payload)
        task = asyncio.ensure_future(self.publish(topic, payload))
        self._sending.add(task)
        task.add_done_callback(self._sent)
        return publish_size(topic, payload)

    def _sent(self, task: asyncio.Task) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("publish failed: %s", task.exception())

    async def publish_result(self, result: ResultMsg) -> int:
        """A verified result for dashboards (JSON, QoS 1, not retained: results are events)."""
        return await self.publish(self.topics.result(self.device_id), result.to_json())

    def _verifier_gone(self, verifier_id: str) -> None:
        """Wake every session waiting on a verifier that announced it is offline."""
        for channel in list(self._channels.values()):
            # An unanswered OPEN may have gone to that verifier too: the shared subscription
            # does not say which member got it.
            if channel.verifier_id == verifier_id or channel.open_pending:
                channel.deliver(VerifierGone(verifier_id))

    def channel(self, session_id: bytes) -> SessionChannel:
        self._channels[session_id] = SessionChannel(self, session_id)
        return self._channels[session_id]

    def release(self, session_id: bytes) -> None:
        """Forget a session's channel: its later messages are dropped."""
        self._channels.pop(session_id, None)
