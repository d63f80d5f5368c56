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

from edgespec.mqtt import make_client
from schemas import DraftMsg, Opened, Sealed, SealedOpen, SessionOpen, Topics, VerdictMsg, WireError, decode, encode

VERIFIER_ID = "null"


async def serve_null(broker_url: str, prefix: str) -> None:
    from security.channel import verifier_open
    from security.dev_identity import default_home, ensure_verifier_keys
    from security.registry import FleetRegistry

    topics = Topics(prefix)
    ensure_verifier_keys(None)
    registry = FleetRegistry(default_home())
    ciphers: dict[bytes, object] = {}

    def reply(sid: bytes, device: str, msg) -> bytes:
        cipher = ciphers.get(sid)
        inner = encode(msg)
        return inner if cipher is None else encode(cipher.seal(topics.down(device), inner))

    async with make_client(broker_url, client_id="edgespec-null-verifier") as client:
        await client.subscribe(topics.open_subscription(None), qos=1)
        await client.subscribe(topics.session_subscription(VERIFIER_ID), qos=1)
        print("null verifier ready", flush=True)
        async for message in client.messages:
            topic = str(message.topic)
            try:
                device = topics.parse_uplink(topic).device_id
                msg = decode(message.payload)
                if isinstance(msg, SealedOpen):
                    key = registry.verifier_keys().get(msg.verifier_key_id)
                    ciphers[msg.session_id], _ = verifier_open(key, registry.public_key(device), device, topic, msg)
                    out = reply(msg.session_id, device, Opened(msg.session_id, VERIFIER_ID, 1))
                elif isinstance(msg, SessionOpen):
                    ciphers[msg.session_id] = None
                    out = reply(msg.session_id, device, Opened(msg.session_id, VERIFIER_ID, 1))
                else:
                    if isinstance(msg, Sealed):
                        inner, _ = ciphers[msg.session_id].open(topic, msg)
                        msg = decode(inner)
                    if not isinstance(msg, DraftMsg):
                        continue
                    k = len(msg.tokens)
                    verdict = VerdictMsg(msg.session_id, msg.seq, [True] * k, k, 0, msg.committed_len + k + 1)
                    out = reply(msg.session_id, device, verdict)
            except (WireError, KeyError, AttributeError):
                continue
            await client.publish(topics.down(device), out, qos=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", default="edgespec/v1")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve_null(args.broker, args.prefix))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
