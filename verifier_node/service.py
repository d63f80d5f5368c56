"""The verifier's MQTT edge: subscribe to uplinks, hand messages to `VerifierCore`, publish replies.

Presence: a retained Last Will marks the verifier `offline` if it dies; it publishes
`online` (retained) once subscribed. Every verifier hears every session open (a plain
subscription: no other account can take a share of them) and answers those it owns in the
pool (verifier_node/membership.py); each verifier's session traffic has its own topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import aiomqtt

from schemas.topics import OFFLINE, ONLINE
from transport import reconnect
from transport.client import make_client, routing_queue, until_disconnected
from transport.publish import publish_many, read_waiting
from transport.reconnect import BusyPoll, get_within, reconnect_delay
from transport.urls import ClientAuth, redact_url

from .core import VerifierCore, _peek_ids
from .membership import PoolMembership

log = logging.getLogger("edgespec.verifier")
STATS_INTERVAL_S = 5.0
SESSION_EXPIRY_S = 60  # how long the broker queues a disconnected verifier's session traffic
# The Last Will waits this long (MQTT v5 Will Delay Interval): a verifier back within it (a
# network blip, a broker restart) keeps its sessions and gets their queued drafts, and its
# devices never hear it was gone; one that stays away is announced offline after it.
WILL_DELAY_S = 2
RETAINED_REASON = "retained"  # rejection counter of uplinks that arrive with the retain flag


def _will_delay(seconds: int):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = seconds
    return props


def stats_snapshot(core: VerifierCore) -> dict:
    return {
        "verifier_id": core.config.verifier_id,
        "ts": time.time(),
        "sessions": len(core.sessions),
        "kv_bytes": core.sessions.kv_bytes(),
        "evictions": core.sessions.evictions,
        "expired": core.sessions.expired,
        "stats": dict(core.stats),
        "batch_sizes": {str(k): v for k, v in sorted(core.batch_sizes.items())},
        "batch_times": core.batch_times.summary(),
        "rejected": dict(core.rejected),
    }


async def serve(
    core: VerifierCore,
    broker_url: str,
    *,
    auth: ClientAuth = ClientAuth(),
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    batch_window_s: float = 0.002,
    max_batch: int = 64,
    busy_poll_s: float = 0.0,
    max_inbox: int = 10_000,
    session_expiry_s: int = SESSION_EXPIRY_S,
) -> None:
    """Serve until `stop` is set (or forever). Raises aiomqtt.MqttError if the broker is gone."""
    topics = core.topics
    vid = core.config.verifier_id
    status_topic = topics.verifier_status(vid)
    will = aiomqtt.Will(status_topic, OFFLINE, qos=1, retain=True, properties=_will_delay(WILL_DELAY_S))
    inbox: asyncio.Queue = asyncio.Queue(maxsize=max_inbox)
    pool = PoolMembership(vid)
    greet = asyncio.Event()  # a peer just started: tell it at once that this verifier is alive
    status_prefix, open_suffix = f"{topics.prefix}/verifier/", "/up/open"

    def route(message: aiomqtt.Message) -> None:  # in the socket's read callback: no extra loop turns
        topic = str(message.topic)
        if topic.startswith(status_prefix):  # peers' availability and stats: the pool's members
            _, peer, kind = topic.rsplit("/", 2)
            if kind == "stats":
                pool.alive(peer)
            elif kind == "status" and pool.status(peer, message.payload if isinstance(message.payload, bytes)
                                                   else b"", retained=bool(message.retain)):
                greet.set()
            return
        if message.retain:
            # A retained uplink is the broker replaying a stored message to a new subscription
            # (a device may publish retained; Mosquitto 2.0's ACL cannot forbid it): never acted on.
            core.rejected[RETAINED_REASON] += 1
            return
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if topic.endswith(open_suffix) and not pool.owns(_owner_key(topic, payload)):
            core.stats["opens_for_peers"] += 1  # another member of the pool answers it
            return
        try:
            inbox.put_nowait((topic, payload))
        except asyncio.QueueFull:  # a flood: shed it here, counted, rather than grow without bound
            core.rejected["overloaded"] += 1

    # Two connections. The verifier's own: an MQTT v5 persistent session (clean start off, an
    # expiry), so drafts for its sessions that arrive while it reconnects are queued by the
    # broker, not lost; it carries the Last Will and every reply. The opens': clean start,
    # for the shared subscription only, so a verifier that is gone is at once out of the
    # share instead of having new sessions queued for it until its session expires.
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(make_client(
            broker_url, client_id=f"edgespec-{vid}", will=will, auth=auth, queue_type=routing_queue(route),
            clean_start=False, session_expiry_s=session_expiry_s))
        opens = await stack.enter_async_context(make_client(
            broker_url, client_id=f"edgespec-{vid}-opens", auth=auth, queue_type=routing_queue(route)))
        await _serve_connected(core, client, opens, inbox, greet=greet, ready=ready, stop=stop,
                               batch_window_s=batch_window_s, max_batch=max_batch, busy_poll_s=busy_poll_s,
                               broker_url=broker_url)


async def _serve_connected(core: VerifierCore, client: aiomqtt.Client, opens: aiomqtt.Client, inbox: asyncio.Queue, *,
                           greet: asyncio.Event, ready: asyncio.Event | None, stop: asyncio.Event | None,
                           batch_window_s: float, max_batch: int, busy_poll_s: float, broker_url: str) -> None:
    """`serve`'s work once both connections are up: subscribe, announce, verify, say goodbye."""
    topics = core.topics
    vid = core.config.verifier_id
    status_topic = topics.verifier_status(vid)

    def publish(messages: list[tuple[str, bytes]]) -> None:
        # Not awaited: waiting for each PUBACK would serialise the next verification behind it.
        for (topic, _), info in zip(messages, publish_many(client, messages)):
            if info.rc != 0:
                log.warning("reply to %s queued: the connection is down (it goes out if the session resumes)", topic)

    await client.subscribe(topics.session_subscription(vid), qos=1)
    await client.subscribe(topics.all_verifier_status(), qos=1)
    await client.subscribe(topics.all_verifier_stats(), qos=1)
    await opens.subscribe(topics.open_subscription(None), qos=1)
    await client.publish(status_topic, ONLINE, qos=1, retain=True)
    log.info("verifier %s serving on %s (model %s)", vid, redact_url(broker_url), core.lm.path)
    if ready is not None:
        ready.set()

    async def housekeeping() -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(greet.wait(), STATS_INTERVAL_S)
            greet.clear()
            core.sessions.expire()
            stats = json.dumps(stats_snapshot(core)).encode()
            publish([(topics.verifier_stats(vid), stats)])

    poller = BusyPoll(busy_poll_s)

    async def verify_batches() -> None:
        # A batch is what is queued when the first message is taken plus what arrives within
        # `batch_window_s`, at most `max_batch` messages. With a single session there is no
        # one to wait for, so the window applies only while the verifier holds several.
        # When the window is over, what already reached the sockets joins the batch too.
        loop = asyncio.get_running_loop()
        while True:
            # Blocks deferred by the last batch (see VerifierCore._open_and_verify) need no
            # message to start a batch; the window still applies, so the blocks that devices
            # send in answer to the last batch's verdicts can join them in one forward.
            batch = [] if core.has_deferred else [await inbox.get()]
            window = batch_window_s if len(core.sessions) > 1 else 0.0
            deadline = loop.time() + window
            read_sockets = True  # once per batch
            while len(batch) < max_batch:
                if not inbox.empty():
                    batch.append(inbox.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining > 0:
                    try:
                        batch.append(await get_within(inbox, remaining))
                        continue
                    except asyncio.TimeoutError:
                        pass
                if not read_sockets:
                    break
                read_sockets = False
                read_waiting(client)
                read_waiting(opens)
            publish(core.handle_batch(batch) + core.take_verified())
            poller.kick()
            await asyncio.sleep(0)  # let the replies go out and new messages come in

    tasks = [asyncio.create_task(until_disconnected(client), name="receive"),  # messages go to `route`
             asyncio.create_task(until_disconnected(opens), name="receive-opens"),
             asyncio.create_task(verify_batches(), name="verify"),
             asyncio.create_task(housekeeping(), name="housekeeping"),
             asyncio.create_task(poller.run(), name="busy-poll")]
    if stop is not None:
        tasks.append(asyncio.create_task(stop.wait(), name="stop"))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.get_name() != "stop" and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        try:  # final stats, then the clean goodbye
            await client.publish(topics.verifier_stats(vid),
                                 json.dumps({**stats_snapshot(core), "final": True}).encode(), qos=1)
            await client.publish(status_topic, OFFLINE, qos=1, retain=True)
        except aiomqtt.MqttError:
            pass


def _owner_key(topic: str, payload: bytes) -> bytes:
    """What decides an OPEN's owner: its session id, else the device id in its topic."""
    session_id, _ = _peek_ids(payload)
    return session_id if session_id is not None else topic.encode()


RECONNECT_BACKOFF_S = reconnect.RECONNECT_BACKOFF_S


async def serve_reconnecting(core: VerifierCore, broker_url: str, *, stop: asyncio.Event,
                             first_attempts: int | None = 1, **kwargs) -> None:
    """`serve` until `stop`, reconnecting when the broker goes away. Sessions (and their KV
    caches) live in `core` and survive the reconnect; devices that lost a reply re-open.
    The first connection is tried `first_attempts` times (so a wrong URL fails fast)."""
    attempt = 0
    ready = kwargs.pop("ready", None) or asyncio.Event()  # set once the first connection is up
    while not stop.is_set():
        try:
            await serve(core, broker_url, ready=ready, stop=stop, **kwargs)
        except aiomqtt.MqttError as exc:
            if not ready.is_set() and first_attempts is not None and attempt + 1 >= first_attempts:
                raise
            log.warning("broker connection lost (%s); reconnecting", exc)
            await asyncio.sleep(reconnect_delay(attempt, RECONNECT_BACKOFF_S))
            attempt += 1
            continue
        attempt = 0
