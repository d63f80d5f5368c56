"""A protocol-only verifier: decodes each draft and answers "all accepted" with no model.

`edgespec bench` runs it in its own process to measure what the wire and the broker cost
per round (encode, publish QoS 1, route, decode, reply), apart from any model work.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from edgespec.mqtt import make_client
from schemas import DraftMsg, Topics, VerdictMsg, WireError, decode, encode

VERIFIER_ID = "null"


async def serve_null(broker_url: str, prefix: str) -> None:
    topics = Topics(prefix)
    async with make_client(broker_url, client_id="edgespec-null-verifier") as client:
        await client.subscribe(topics.session_subscription(VERIFIER_ID), qos=1)
        print("null verifier ready", flush=True)
        async for message in client.messages:
            try:
                device = topics.parse_uplink(str(message.topic)).device_id
                msg = decode(message.payload)
            except WireError:
                continue
            if isinstance(msg, DraftMsg):
                k = len(msg.tokens)
                verdict = VerdictMsg(msg.session_id, msg.seq, [True] * k, k, 0, msg.committed_len + k + 1)
                await client.publish(topics.down(device), encode(verdict), qos=1)


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
