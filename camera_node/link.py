"""The device's MQTT edge: one connection, per-session inboxes, request/response with timeouts.

Replies on the device's downlink are routed by session id into a queue per session, so a
session waits only for its own verdicts; duplicates (QoS 1 may deliver twice) and stale
replies are dropped by sequence number in `SessionChannel.exchange`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from dataclasses import dataclass

import aiomqtt

from schemas import (
    Close, DraftMsg, ErrorCode, ErrorMsg, Opened, Resync, ResultMsg, Sealed, SessionOpen, Topics, VerdictMsg,
    WireError,
)
from schemas.messages import decode, encode, now_ms
from schemas.topics import OFFLINE, ONLINE
from security.channel import device_open
from transport.client import make_client, routing_queue, until_disconnected
from transport.publish import publish_now
from transport.reconnect import RECONNECT_BACKOFF_S, get_within, reconnect_delay
from transport.urls import ClientAuth

log = logging.getLogger("edgespec.camera")
DEFAULT_TIMEOUT_S = 10.0


class VerifierTimeout(TimeoutError):
    """No verifier answered in time."""


class VerifierRejected(RuntimeError):
    """The verifier answered with an ERROR."""

    def __init__(self, error: ErrorMsg):
        try:
            name = ErrorCode(error.code).name.lower()
        except ValueError:
            name = f"code {error.code}"
        super().__init__(f"verifier rejected the message ({name}): {error.message}")
        self.error = error


class VerifierLost(VerifierTimeout):
    """The verifier holding the session announced it is offline (its Last Will), or the
    connection to the broker was lost and re-established meanwhile."""


class BrokerUnreachable(ConnectionError):
    """The broker connection was lost and could not be re-established in time."""


_GONE = object()  # inbox sentinel (with the verifier's id): a verifier went offline
GONE_GRACE_S = 0.5
_RECONNECTED = object()  # inbox sentinel: the link was re-established; replies may have been lost
SESSION_EXPIRY_S = 300  # the broker keeps the device's subscription and queued QoS-1 messages


class ResyncFailed(RuntimeError):
    """The verifier could not take the session back after a RESYNC."""


def publish_size(topic: str, payload: bytes) -> int:
    """Bytes of an MQTT v5 QoS-1 PUBLISH packet (fixed header, topic, packet id, properties)."""
    body = 2 + len(topic.encode()) + 2 + 1 + len(payload)
    length_bytes = 1 if body < 128 else 2 if body < 16384 else 3 if body < 2097152 else 4
    return 1 + length_bytes + body


@dataclass
class Traffic:
    """Bytes one session sent and received, counted as whole PUBLISH packets."""

    up: int = 0
    down: int = 0
    up_messages: int = 0
    down_messages: int = 0


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
                 reconnect_s: float = 30.0):
        """`keys` (security.channel.DeviceKeys) encrypts every session end to end; None sends plaintext.

        The link is an MQTT v5 persistent session (clean start off, a session expiry), so a short
        disconnect loses no QoS-1 message; if the connection drops it reconnects for up to
        `reconnect_s` seconds, and sessions waiting for a reply re-open with their full context.
        """
        self.reconnect_s = reconnect_s
        self.reconnects = 0
        self._connected = asyncio.Event()
        self.device_id = device_id
        self.keys = keys
        self.topics = topics
        self.timeout_s = timeout_s
        self._down = topics.down(device_id)  # validates the id
        status = topics.device_status(device_id)
        self._status = status
        self._client = make_client(
            broker_url, client_id=f"edgespec-dev-{device_id}",
            will=aiomqtt.Will(status, OFFLINE, qos=1, retain=True), auth=auth,
            clean_start=False, session_expiry_s=SESSION_EXPIRY_S, queue_type=routing_queue(self._route),
        )
        self._inbox: dict[bytes, asyncio.Queue] = {}
        self.verifier_status: dict[str, bytes] = {}  # the latest availability each verifier announced
        self._channels: dict[bytes, "SessionChannel"] = {}
        self._reader: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()  # publishes not waited for (see `send`)
        self._unacked: collections.deque = collections.deque()  # paho infos of messages `send` wrote
        self.rejected_downlink = 0
        self._followed: dict[str, object] = {}  # topic -> handler(payload), see `follow`

    async def _connect(self) -> None:
        await self._client.__aenter__()
        await self._client.subscribe(self._down, qos=1)
        await self._client.subscribe(self.topics.all_verifier_status(), qos=1)
        for topic in self._followed:
            await self._client.subscribe(topic, qos=1)
        await self._client.publish(self._status, ONLINE, qos=1, retain=True)
        self._connected.set()

    async def __aenter__(self) -> "EdgeLink":
        await self._connect()
        self._reader = asyncio.create_task(self._read_forever(), name=f"downlink-{self.device_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        deadline = asyncio.get_running_loop().time() + self.timeout_s  # for everything still unsent
        if self._sending:
            _, unsent = await asyncio.wait(set(self._sending), timeout=self.timeout_s)
            for task in unsent:  # the broker stayed away: give up on them
                task.cancel()
        while self._connected.is_set() and self._unacked and asyncio.get_running_loop().time() < deadline:
            if _settled(self._unacked[0]):
                self._unacked.popleft()
            else:
                await asyncio.sleep(0.001)  # its PUBACK is on the way
        if self._reader is not None:
            self._reader.cancel()
        if self._connected.is_set():
            try:
                await self._client.publish(self._status, OFFLINE, qos=1, retain=True)
                await self._client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass

    async def _read_forever(self) -> None:
        """Read the downlink; on a lost connection, reconnect and wake the waiting sessions."""
        while True:
            try:
                await self._read()
            except aiomqtt.MqttError as exc:
                self._connected.clear()
                log.warning("broker connection lost (%s); reconnecting", exc)
                await self._reconnect()
                self.reconnects += 1
                for queue in self._inbox.values():
                    queue.put_nowait((_RECONNECTED, 0))

    async def _reconnect(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.reconnect_s
        attempt = 0
        while True:
            try:
                await self._client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass
            try:
                await self._connect()
                return
            except aiomqtt.MqttError as exc:
                if asyncio.get_running_loop().time() > deadline:
                    failed = BrokerUnreachable(f"broker unreachable for {self.reconnect_s:.0f} s: {exc}")
                    for queue in self._inbox.values():
                        queue.put_nowait((failed, 0))
                    raise failed from None
                await asyncio.sleep(reconnect_delay(attempt))
                attempt += 1

    async def _read(self) -> None:
        # Messages are routed as they arrive (`_route`); this only waits for the connection to drop.
        await until_disconnected(self._client)

    def _route(self, message: aiomqtt.Message) -> None:
        """Deliver one downlink message to its session's inbox (runs in the read callback)."""
        payload = message.payload if isinstance(message.payload, bytes) else b""
        topic = str(message.topic)
        if self._followed and topic in self._followed:
            self._followed[topic](payload)  # type: ignore[operator]
            return
        # The common case first: the downlink topic ({p}/dev/{id}/down) is never a status topic.
        status = None if topic == self._down else self.topics.parse_status(topic)
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
        queue = self._inbox.get(sid) if sid is not None else None
        if queue is not None:
            queue.put_nowait((msg, publish_size(topic, payload)))
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
        for attempt in range(2):
            if not self._connected.is_set():
                try:
                    await asyncio.wait_for(self._connected.wait(), self.reconnect_s)
                except asyncio.TimeoutError:
                    raise BrokerUnreachable(f"no broker connection for {self.reconnect_s:.0f} s") from None
            try:
                await self._client.publish(topic, payload, qos=qos, retain=retain)
                return publish_size(topic, payload)
            except aiomqtt.MqttError:
                if attempt:
                    raise
                # A lost connection is the reader's to notice (it clears `_connected` and
                # reconnects, and the retry waits for that); a PUBACK that timed out on a live
                # one is simply retried.
                await asyncio.sleep(RECONNECT_BACKOFF_S[0])
        raise AssertionError("unreachable")

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
        for sid, channel in self._channels.items():
            # An unanswered OPEN may have gone to that verifier too: the shared subscription
            # does not say which member got it.
            if channel.verifier_id == verifier_id or channel.open_pending:
                self._inbox[sid].put_nowait((_GONE, verifier_id))

    def channel(self, session_id: bytes) -> "SessionChannel":
        self._inbox[session_id] = asyncio.Queue()
        self._channels[session_id] = SessionChannel(self, session_id)
        return self._channels[session_id]

    def _release(self, session_id: bytes) -> None:
        self._inbox.pop(session_id, None)
        self._channels.pop(session_id, None)


class SessionChannel:
    """One session's messages: open, exchange drafts for verdicts, close."""

    def __init__(self, link: EdgeLink, session_id: bytes):
        self.link = link
        self.session_id = session_id
        self.verifier_id: str | None = None
        self.traffic = Traffic()
        self.cipher = None  # security.channel.SessionCipher once an encrypted open was sent
        self.rejected = 0
        self.open_pending = False  # an OPEN was sent and its OPENED not yet received

    async def _send(self, topic: str, payload: bytes) -> None:
        self.traffic.up += self.link.send(topic, payload)
        self.traffic.up_messages += 1

    async def _send_msg(self, topic: str, msg) -> None:
        inner = encode(msg)
        await self._send(topic, inner if self.cipher is None else encode(self.cipher.seal(topic, inner)))

    async def _next(self, waiting_for: str):
        queue = self.link._inbox[self.session_id]
        deadline = asyncio.get_running_loop().time() + self.link.timeout_s
        while True:
            try:
                if not queue.empty():  # already delivered: no task, no loop turn
                    msg, size = queue.get_nowait()
                else:
                    remaining = deadline - asyncio.get_running_loop().time()
                    msg, size = await get_within(queue, max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise VerifierTimeout(
                    f"no verifier answered {waiting_for} within {self.link.timeout_s:.1f} s on "
                    f"{self.link.topics.prefix}; is `edgespec verifier` running against this broker?"
                ) from None
            if msg is _GONE:
                # A retained `offline` can be stale for a moment (a broker that restarted sends
                # the Will of a verifier that reconnects at once): give it a short grace, and
                # keep waiting if that verifier is back, since it kept its sessions.
                gone = size  # a notice carries the verifier's id where a message carries its size
                await asyncio.sleep(GONE_GRACE_S)
                if gone == self.verifier_id and self.link.verifier_status.get(gone) == ONLINE:
                    continue
                raise VerifierLost(f"verifier {gone} went offline while waiting for {waiting_for}")
            if msg is _RECONNECTED:
                raise VerifierLost(f"the broker connection was re-established while waiting for {waiting_for}")
            if isinstance(msg, BrokerUnreachable):
                raise msg
            self.traffic.down += size
            self.traffic.down_messages += 1
            if not isinstance(msg, Sealed):
                # An encrypted session takes only RESYNC in the clear, and ERROR only while its
                # open is unanswered (the verifier cannot seal before it has the keys).
                allowed = (Resync, ErrorMsg) if self.open_pending else (Resync,)
                if self.cipher is not None and not isinstance(msg, allowed):
                    self.rejected += 1
                    continue
                return msg
            if self.cipher is None:
                self.rejected += 1
                continue
            try:
                inner, duplicate = self.cipher.open(self.link._down, msg)
                if duplicate:
                    continue
                return decode(inner)
            except WireError as err:
                self.rejected += 1
                log.warning("dropped a downlink message that failed authentication: %s", err)

    def has_downlink(self) -> bool:
        """Whether a reply or notice for this session is queued, not yet taken by `_next`."""
        queue = self.link._inbox.get(self.session_id)
        return queue is not None and not queue.empty()

    def drain(self) -> None:
        """Forget queued replies and notices (before a re-open: they belong to the old session)."""
        queue = self.link._inbox.get(self.session_id)
        while queue is not None and not queue.empty():
            queue.get_nowait()

    async def reopen(self, msg: SessionOpen) -> Opened:
        """Send `msg` again after the session was lost, forgetting replies already queued (they
        belong to the old session), and wait for its OPENED."""
        self.drain()
        await self.send_open(msg)
        return await self.wait_opened()

    async def send_open(self, msg: SessionOpen) -> None:
        """Send the OPEN (sealed under fresh keys when the link has device keys), stamped with
        the time it is sent: a verifier refuses a sealed OPEN outside its freshness window."""
        msg = dataclasses.replace(msg, sent_at_ms=now_ms())
        topic = self.link.topics.open(self.link.device_id)
        self.open_pending = True
        keys = self.link.keys
        if keys is None:
            await self._send(topic, encode(msg))
            return
        self.cipher, sealed = device_open(keys.device_key, keys.verifier_pub, keys.verifier_key_id,
                                          self.link.device_id, self.session_id, topic, encode(msg))
        await self._send(topic, encode(sealed))

    async def wait_opened(self, *, or_resync: bool = False) -> Opened | Resync:
        """The OPENED (a RESYNC too with `or_resync`: the verifier lost the session before it
        could answer the block the OPEN carried)."""
        # Called after send_open, so open_pending is set until the OPENED below: `_next` takes an
        # ERROR in the clear meanwhile (and, as exchange runs only after a successful open, only then).
        while True:
            msg = await self._next("the session open")
            if isinstance(msg, Opened):
                self.verifier_id = msg.verifier_id
                self.open_pending = False
                return msg
            if isinstance(msg, ErrorMsg):
                raise VerifierRejected(msg)
            if or_resync and isinstance(msg, Resync):
                return msg

    async def exchange(self, draft: DraftMsg) -> VerdictMsg | Resync:
        """Send a draft block and wait for its verdict (or a RESYNC)."""
        assert self.verifier_id is not None, "wait_opened() first"
        await self._send_msg(self.link.topics.session_up(self.link.device_id, self.verifier_id), draft)
        return await self._verdict(draft.seq)

    async def open_with_block(self, msg: SessionOpen) -> VerdictMsg | Resync:
        """Send an OPEN that carries the first block (`msg.first_block`) and wait for the
        OPENED, which holds the block's verdict (seq 0)."""
        assert msg.first_block is not None
        await self.send_open(msg)
        opened = await self.wait_opened(or_resync=True)
        if isinstance(opened, Resync):
            return opened
        if opened.first_verdict is not None:
            return opened.first_verdict
        return await self._verdict(0)  # a verifier that answers the block in a VERDICT of its own

    async def _verdict(self, seq: int) -> VerdictMsg | Resync:
        while True:
            msg = await self._next(f"draft seq {seq}")
            if isinstance(msg, VerdictMsg):
                if msg.seq == seq:
                    return msg
                continue  # a duplicate or stale verdict
            if isinstance(msg, Resync):
                return msg
            if isinstance(msg, ErrorMsg):
                if msg.seq is None or msg.seq == seq:
                    raise VerifierRejected(msg)
                continue

    async def close(self, reason: str = "done", *, finished: bool = False) -> None:
        """End the session here. `finished`: the verifier's last VERDICT said done, so it has
        ended the session itself and no CLOSE is sent."""
        try:
            if self.verifier_id is not None and not finished:
                topic = self.link.topics.session_up(self.link.device_id, self.verifier_id)
                await self._send_msg(topic, Close(self.session_id, reason))
        finally:
            self.link._release(self.session_id)
