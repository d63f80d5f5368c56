"""The verifier's MQTT edge: subscribe to uplinks, hand messages to `VerifierCore`, publish replies.

Presence: a retained Last Will marks the verifier `offline` if it dies; it publishes
`online` (retained) once subscribed. Every verifier hears every session open (a plain
subscription: no other account can take a share of them) and answers those it owns in the
pool (verifier_node/membership.py); each verifier's session traffic has its own topic.
A long batch runs on a model thread of the verifier's own, while the event loop keeps
receiving, answering the broker's keepalive and telling waiting devices QUEUED
(queue_notices.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import aiomqtt

from schemas.topics import OFFLINE, ONLINE
from transport import reconnect
from transport.client import make_client, routing_queue, until_disconnected
from transport.publish import publish_many, read_waiting
from transport.presence import Status
from transport.reconnect import BusyPoll, get_within
from transport.retry import RetryPolicy
from transport.urls import ClientAuth, redact_url

from .core import VerifierCore
from .replies import peek_ids
from .membership import PoolMembership
from .queue_notices import TICK_S, QueueNotices

log = logging.getLogger("edgespec.verifier")
STATS_INTERVAL_S = 5.0
OPEN_SUFFIX = "/up/open"
Messages = list[tuple[str, bytes]]  # (topic, payload) pairs
Publish = Callable[[Messages], None]
# The Last Will waits this long (MQTT v5 Will Delay Interval): a verifier back within it (a
# network blip, a broker restart) keeps its sessions and gets their queued drafts, and its
# devices never hear it was gone; one that stays away is announced offline after it.
WILL_DELAY_S = 2
RETAINED_REASON = "retained"  # rejection counter of uplinks that arrive with the retain flag
# A batch expected to take this long or longer (or the first, with no history) runs on the
# model thread, so the service keeps receiving, telling waiting devices QUEUED and answering
# the broker's keepalive meanwhile; a shorter one runs on the event loop's thread, with no
# hand-off between threads.
ASIDE_AFTER_S = 0.05


def stats_snapshot(core: VerifierCore) -> dict:
    return {
        "verifier_id": core.settings.verifier_id,
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


async def serve(core: VerifierCore, broker_url: str, *, auth: ClientAuth = ClientAuth(),
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or forever), tuned by `core.settings` (batching, busy poll,
    inbox, session expiry). Raises aiomqtt.MqttError if the broker is gone."""
    settings = core.settings
    vid = settings.verifier_id
    will = _status(core).will(delay_s=WILL_DELAY_S)
    router = _Router(core, asyncio.Queue(maxsize=settings.max_inbox))
    # Two connections. The verifier's own: an MQTT v5 persistent session (clean start off, an
    # expiry), so drafts for its sessions that arrive while it reconnects are queued by the
    # broker, not lost; it carries the Last Will and every reply. The opens': clean start,
    # for the OPEN subscription only, so a verifier that is gone is not queued new sessions
    # until its session expires.
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(make_client(
            broker_url, client_id=f"edgespec-{vid}", will=will, auth=auth, queue_type=routing_queue(router),
            clean_start=False, session_expiry_s=settings.session_expiry_s))
        opens = await stack.enter_async_context(make_client(
            broker_url, client_id=f"edgespec-{vid}-opens", auth=auth, queue_type=routing_queue(router)))
        await _serve_connected(core, client, opens, router, ready=ready, stop=stop, broker_url=broker_url)


class _Router:
    """Where each received message goes, in the socket's read callback (no extra loop turns):
    peers' availability and stats to the pool membership, uplinks to the inbox."""

    def __init__(self, core: VerifierCore, inbox: asyncio.Queue):
        self.core = core
        self.inbox = inbox
        self.pool = PoolMembership(core.settings.verifier_id)
        self.greet = asyncio.Event()  # a peer just started: tell it at once that this verifier is alive
        self.status_prefix = f"{core.topics.prefix}/verifier/"

    def __call__(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes) else b""
        if topic.startswith(self.status_prefix):  # peers' availability and stats: the pool's members
            _, peer, kind = topic.rsplit("/", 2)
            if kind == "stats":
                self.pool.alive(peer)
            elif kind == "status" and self.pool.status(peer, payload, retained=bool(message.retain)):
                self.greet.set()
            return
        if message.retain:
            # A retained uplink is the broker replaying a stored message to a new subscription
            # (a device may publish retained; Mosquitto 2.0's ACL cannot forbid it): never acted on.
            self.core.rejected[RETAINED_REASON] += 1
            return
        if topic.endswith(OPEN_SUFFIX) and not self.pool.owns(_owner_key(topic, payload)):
            self.core.stats["opens_for_peers"] += 1  # another member of the pool answers it
            return
        try:
            self.inbox.put_nowait((topic, payload))
        except asyncio.QueueFull:  # a flood: shed it here, counted, rather than grow without bound
            self.core.rejected["overloaded"] += 1


async def _serve_connected(core: VerifierCore, client: aiomqtt.Client, opens: aiomqtt.Client, router: _Router, *,
                           ready: asyncio.Event | None, stop: asyncio.Event | None, broker_url: str) -> None:
    """`serve`'s work once both connections are up: subscribe, announce, verify, say goodbye."""
    topics, vid = core.topics, core.settings.verifier_id

    def publish(messages: list[tuple[str, bytes]]) -> None:
        # Not awaited: waiting for each PUBACK would serialise the next verification behind it.
        for (topic, _), info in zip(messages, publish_many(client, messages)):
            if info.rc != 0:
                log.warning("reply to %s queued: the connection is down (it goes out if the session resumes)", topic)

    await opens.subscribe(topics.open_subscription(None), qos=1)
    await _status(core).go_online(client, [topics.session_subscription(vid), topics.all_verifier_status(),
                                           topics.all_verifier_stats()])
    log.info("verifier %s serving on %s (model %s)", vid, redact_url(broker_url), core.lm.path)
    if ready is not None:
        ready.set()
    poller = BusyPoll(core.settings.busy_poll_s)
    core_free = asyncio.Lock()  # held by a batch while it runs, and by housekeeping
    tasks: list[asyncio.Task] = [
        asyncio.create_task(until_disconnected(client), name="receive"),  # messages go to the router
        asyncio.create_task(until_disconnected(opens), name="receive-opens"),
        asyncio.create_task(_verify_batches(core, router.inbox, (client, opens), publish, poller, core_free),
                            name="verify"),
        asyncio.create_task(_housekeeping(core, router.greet, publish, core_free), name="housekeeping"),
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
        # A batch on the model thread runs to its end (its replies go out if they can) before
        # the goodbye reads the core, and before a reconnect serves the same core again.
        await asyncio.gather(*tasks, return_exceptions=True)
        await _goodbye(core, client)


async def _housekeeping(core: VerifierCore, greet: asyncio.Event, publish: Publish, core_free: asyncio.Lock) -> None:
    """Every stats interval (at once when a peer starts): expire idle sessions, publish stats
    (between batches: a batch on the model thread owns the core while it runs)."""
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(greet.wait(), STATS_INTERVAL_S)
        greet.clear()
        async with core_free:
            core.sessions.expire()
            stats = json.dumps(stats_snapshot(core)).encode()
        publish([(core.topics.verifier_stats(core.settings.verifier_id), stats)])


async def _verify_batches(core: VerifierCore, inbox: asyncio.Queue, clients: tuple[aiomqtt.Client, ...],
                          publish: Publish, poller: BusyPoll, core_free: asyncio.Lock) -> None:
    """Take batches from the inbox, verify them, publish the replies. Before a batch runs, the
    devices whose message will take a while (this batch, or the ones queued behind it) are told
    QUEUED (queue_notices.py), so they keep waiting; a long batch runs on the model thread,
    and while it runs they are told again (`_run_aside`)."""
    notices = QueueNotices(core.topics, core.settings.max_batch)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify") as model_thread:
        while True:
            batch = await _next_batch(core, inbox, clients)
            poller.stop()  # the model works now: polling would only slow it (it may run aside)
            async with core_free:
                told = notices.tell(batch, _queued(inbox), inbox.qsize())
                if told:
                    core.stats["queued_notices"] += len(told)
                    publish(told)
                started = time.perf_counter()
                if notices.batches and notices.batch_s < ASIDE_AFTER_S:
                    replies = _run_batch(core, batch)
                else:
                    replies = await _run_aside(core, batch, inbox, notices, publish, model_thread)
                notices.took(time.perf_counter() - started)
            publish(replies)
            poller.kick()
            await asyncio.sleep(0)  # let the replies go out and new messages come in


def _run_batch(core: VerifierCore, batch: Messages) -> Messages:
    return core.handle_batch(batch) + core.take_verified()


def _queued(inbox: asyncio.Queue):
    """The messages waiting in `inbox`, oldest first, without taking them."""
    return getattr(inbox, "_queue", ())


async def _run_aside(core: VerifierCore, batch: Messages, inbox: asyncio.Queue, notices: QueueNotices,
                     publish: Publish, model_thread: ThreadPoolExecutor) -> Messages:
    """`batch` on the model thread; meanwhile, every `TICK_S`, QUEUED for its messages and for
    those that arrive behind it. Cancelled, it still waits for the batch to end (the core is
    the batch's until then), telling the devices as before, publishes its replies, and then
    ends cancelled."""
    started = time.perf_counter()
    running = asyncio.wrap_future(model_thread.submit(_run_batch, core, batch))
    cancelled = False
    told = 0
    try:
        while not running.done():
            try:
                await asyncio.wait((running,), timeout=TICK_S)
            except asyncio.CancelledError:
                cancelled = True
            if not running.done():
                notes = notices.tell(batch, _queued(inbox), inbox.qsize(), running_s=time.perf_counter() - started)
                if notes:
                    told += len(notes)
                    publish(notes)
    finally:
        core.stats["queued_notices"] += told  # counted here, not while the model thread writes the stats
    if cancelled:
        if running.exception() is None:
            publish(running.result())
        raise asyncio.CancelledError
    return running.result()


async def _next_batch(core: VerifierCore, inbox: asyncio.Queue,
                      clients: tuple[aiomqtt.Client, ...]) -> list[tuple[str, bytes]]:
    """What is queued when the first message is taken plus what arrives within the batch
    window, at most `max_batch` messages. With a single session there is no one to wait for,
    so the window applies only while the verifier holds several. When the window is over,
    what already reached the sockets joins the batch too."""
    settings = core.settings
    loop = asyncio.get_running_loop()
    # Blocks deferred by the last batch (see scheduler.Scheduler.run) need no message to start
    # a batch; the window still applies, so the blocks that devices send in answer to the last
    # batch's verdicts can join them in one forward.
    batch = [] if core.has_deferred else [await inbox.get()]
    deadline = loop.time() + (settings.batch_window_s if len(core.sessions) > 1 else 0.0)
    read_sockets = True  # once per batch
    while len(batch) < settings.max_batch:
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
        for client in clients:
            read_waiting(client)
    return batch


async def _goodbye(core: VerifierCore, client: aiomqtt.Client) -> None:
    """Final stats, then the clean `offline`."""
    vid = core.settings.verifier_id
    try:
        await client.publish(core.topics.verifier_stats(vid),
                             json.dumps({**stats_snapshot(core), "final": True}).encode(), qos=1)
        await _status(core).go_offline(client)
    except aiomqtt.MqttError:
        pass


def _status(core: VerifierCore) -> Status:
    """The verifier's retained availability (transport.presence, as the device's)."""
    return Status(core.topics.verifier_status(core.settings.verifier_id), ONLINE, OFFLINE)


def _owner_key(topic: str, payload: bytes) -> bytes:
    """What decides an OPEN's owner: its session id, else the device id in its topic."""
    session_id, _ = peek_ids(payload)
    return session_id if session_id is not None else topic.encode()


RECONNECT_BACKOFF_S = reconnect.RECONNECT_BACKOFF_S


async def serve_reconnecting(core: VerifierCore, broker_url: str, *, stop: asyncio.Event,
                             first_attempts: int | None = 1, auth: ClientAuth = ClientAuth(),
                             ready: asyncio.Event | None = None) -> None:
    """`serve` until `stop`, reconnecting when the broker goes away. Sessions (and their KV
    caches) live in `core` and survive the reconnect; devices that lost a reply re-open.
    The first connection is tried `first_attempts` times (so a wrong URL fails fast)."""
    policy = RetryPolicy(attempts=first_attempts, backoff=RECONNECT_BACKOFF_S)
    tries = policy.tries()
    ready = ready or asyncio.Event()  # set once the first connection is up
    while not stop.is_set():
        try:
            await serve(core, broker_url, auth=auth, ready=ready, stop=stop)
        except aiomqtt.MqttError as exc:
            if not ready.is_set() and tries.out_of_attempts():
                raise
            log.warning("broker connection lost (%s); reconnecting", exc)
            await tries.wait()
            continue
        tries = policy.tries()
