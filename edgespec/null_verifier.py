"""A protocol-only verifier: decodes (and decrypts) each draft and answers "all accepted" with
no model.

`edgespec bench` runs it in its own process to measure what the wire, the broker and the
encryption cost per round (encode, seal, publish QoS 1, route, open, decode, reply), apart
from any model work.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from edgespec.config import DEFAULTS
from schemas import DraftMsg, Opened, Sealed, SealedOpen, SessionOpen, Topics, VerdictMsg, WireError, decode, encode
from schemas.topics import PROTOCOL
from transport.client import make_client, routing_queue, until_disconnected
from transport.publish import publish_now
from transport.reconnect import BusyPoll

VERIFIER_ID = "null"


async def serve_null(broker_url: str, prefix: str, busy_poll_s: float = 0.02) -> None:
    from security.channel import SessionCipher, verifier_open
    from security.dev_identity import default_home, ensure_verifier_keys
    from security.registry import FleetRegistry

    topics = Topics(prefix)
    ensure_verifier_keys(None)
    registry = FleetRegistry(default_home())
    ciphers: dict[bytes, SessionCipher | None] = {}

    def reply(sid: bytes, device: str, msg) -> bytes:
        cipher = ciphers.get(sid)
        inner = encode(msg)
        return inner if cipher is None else encode(cipher.seal(topics.down(device), inner))

    def answer(topic: str, payload: bytes) -> tuple[str, bytes] | None:
        device = topics.parse_uplink(topic).device_id
        msg = decode(payload)
        if isinstance(msg, SealedOpen):
            key = registry.verifier_keys().get(msg.verifier_key_id)
            device_pub = registry.public_key(device)
            if device_pub is None:  # not a provisioned device
                return None
            ciphers[msg.session_id], _ = verifier_open(key, device_pub, device, topic, msg)
            return topics.down(device), reply(msg.session_id, device, Opened(msg.session_id, VERIFIER_ID, 1))
        if isinstance(msg, SessionOpen):
            ciphers[msg.session_id] = None
            return topics.down(device), reply(msg.session_id, device, Opened(msg.session_id, VERIFIER_ID, 1))
        if isinstance(msg, Sealed):
            cipher = ciphers[msg.session_id]
            if cipher is None:  # a sealed message in a plaintext session
                return None
            inner, _ = cipher.open(topic, msg)
            msg = decode(inner)
        if not isinstance(msg, DraftMsg):
            return None
        k = len(msg.tokens)
        verdict = VerdictMsg(msg.session_id, msg.seq, [True] * k, k, 0, msg.committed_len + k + 1)
        return topics.down(device), reply(msg.session_id, device, verdict)

    # The same message path as the real verifier (verifier_node.service): messages routed in
    # the read callback, replies published without waiting for their PUBACK, busy polling.
    inbox: asyncio.Queue = asyncio.Queue()
    route = routing_queue(lambda m: inbox.put_nowait((str(m.topic), m.payload)))
    async with make_client(broker_url, client_id="edgespec-null-verifier", queue_type=route) as client:
        await client.subscribe(topics.open_subscription(None), qos=1)
        await client.subscribe(topics.session_subscription(VERIFIER_ID), qos=1)
        poller = BusyPoll(busy_poll_s)
        polling = asyncio.create_task(poller.run())
        watcher = asyncio.create_task(until_disconnected(client))
        watcher.add_done_callback(lambda _: inbox.put_nowait(None))  # the connection is gone: stop
        print("null verifier ready", flush=True)
        while (item := await inbox.get()) is not None:
            topic, payload = item
            try:
                out = answer(topic, payload if isinstance(payload, bytes) else b"")
            except (WireError, KeyError, AttributeError):
                continue
            if out is not None:
                publish_now(client, *out)
            poller.kick()
        polling.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", default=PROTOCOL)
    parser.add_argument("--busy-poll-ms", type=float, default=DEFAULTS.busy_poll_ms,
                        help="as `edgespec verifier --busy-poll-ms`")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve_null(args.broker, args.prefix, args.busy_poll_ms / 1000))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
