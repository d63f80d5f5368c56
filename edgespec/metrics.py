"""Prometheus metrics for the verifier and the camera node, served over HTTP on the node's
own event loop (``--metrics-port``).

Nothing here counts anything: the collectors read, at scrape time, the figures the nodes keep
anyway (the verifier's :class:`verifier_node.core.VerifierCore` counters, session table and
:class:`verifier_node.timing.BatchTimes`; the camera's :class:`camera_node.node.CameraRun`).
Each node gets a registry of its own (no global state), and the endpoint runs on the same
event loop as the node, so a scrape never reads a counter halfway through an update.
Units are base units (seconds, bytes); counters end in ``_total``.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("edgespec.metrics")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ROUND_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class MetricsPortError(ValueError):
    """The metrics endpoint could not listen where it was asked to."""


def _fmt(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def histogram_from_counts(name: str, doc: str, values: dict[float, int], bounds, total: float,
                          labels: dict[str, str] | None = None) -> HistogramMetricFamily:
    """A histogram family from exact observations counted by value (``{value: times}``)."""
    family = HistogramMetricFamily(name, doc, labels=list(labels or {}))
    buckets, count = [], sum(values.values())
    for bound in bounds:
        buckets.append((_fmt(bound), sum(n for v, n in values.items() if v <= bound)))
    buckets.append(("+Inf", count))
    family.add_metric(list((labels or {}).values()), buckets, total)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class VerifierCollector:
    """The verifier's figures: sessions, blocks, acceptance, batches, rejections, bytes."""

    def __init__(self, core):
        self.core = core

    def collect(self):
        core, stats = self.core, self.core.stats
        p = "edgespec_verifier_"
        yield _gauge(p + "sessions", "Sessions held now", len(core.sessions))
        yield _gauge(p + "kv_cache_bytes", "Bytes of KV cache the held sessions use", core.sessions.kv_bytes())
        yield _counter(p + "sessions_opened", "Sessions opened", stats["opened"])
        yield _counter(p + "sessions_finished", "Sessions ended by a final verdict", stats["finished"])
        yield _counter(p + "sessions_closed", "Sessions closed by their device", stats["closed"])
        yield _counter(p + "evictions", "Live sessions evicted for room (the device is told RESYNC)",
                       core.sessions.evictions)
        yield _counter(p + "expired_sessions", "Idle sessions dropped", core.sessions.expired)
        yield _counter(p + "resyncs", "RESYNCs sent", stats["resyncs"])
        yield _counter(p + "verified_blocks", "Drafted blocks verified", stats["verified_blocks"])
        yield _counter(p + "drafted_tokens", "Drafted tokens received in verified blocks", stats["drafted_tokens"])
        yield _counter(p + "accepted_tokens", "Drafted tokens accepted", stats["accepted_tokens"])
        lengths = dict(core.accepted_lengths)
        yield histogram_from_counts(p + "accepted_length", "Drafts accepted per verified block", lengths,
                                    range(max([8, *lengths]) + 1), sum(k * n for k, n in lengths.items()))
        judged = CounterMetricFamily(p + "position_judged", "Times a draft position was judged "
                                     "(positions up to the first rejection)", labels=["position"])
        accepted = CounterMetricFamily(p + "position_accepted", "Times a draft position was accepted",
                                       labels=["position"])
        ratio = GaugeMetricFamily(p + "position_acceptance_ratio", "Accepted / judged per draft position",
                                  labels=["position"])
        for position in sorted(core.position_judged):
            n, a = core.position_judged[position], core.position_accepted[position]
            judged.add_metric([str(position)], n)
            accepted.add_metric([str(position)], a)
            ratio.add_metric([str(position)], a / n if n else 0.0)
        yield judged
        yield accepted
        yield ratio
        sizes = dict(core.batch_sizes)
        yield histogram_from_counts(p + "batch_size", "Blocks per batched target forward", sizes,
                                    BATCH_SIZE_BUCKETS, sum(k * n for k, n in sizes.items()))
        times = core.batch_times
        from verifier_node.timing import DURATION_BUCKETS_S

        batch = HistogramMetricFamily(p + "batch_duration_seconds", "Seconds the verifier spent on a batch "
                                      "of messages (its part of a round)")
        running, buckets = 0, []
        for bound, n in zip(DURATION_BUCKETS_S, times.bucket_counts):
            running += n
            buckets.append((_fmt(bound), running))
        buckets.append(("+Inf", times.count))
        batch.add_metric([], buckets, times.total_s)
        yield batch
        rejected = CounterMetricFamily(p + "rejected_messages", "Messages rejected, by reason", labels=["reason"])
        for reason, n in sorted(core.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield _counter(p + "received_messages", "Uplink messages handled", stats["messages_in"])
        yield _counter(p + "sent_messages", "Replies sent", stats["messages_out"])
        yield _counter(p + "received_bytes", "Payload bytes of the uplink messages handled", stats["bytes_in"])
        yield _counter(p + "sent_bytes", "Payload bytes of the replies sent", stats["bytes_out"])


class CameraCollector:
    """The camera's figures, from its :class:`camera_node.node.CameraRun`."""

    def __init__(self, run):
        self.run = run

    def collect(self):
        run, p = self.run, "edgespec_camera_"
        captions = list(run.captions)
        sessions = [c.session for c in captions if getattr(c, "session", None) is not None]
        yield _counter(p + "frames", "Frames read from the source", run.frames)
        yield _counter(p + "events", "Motion events", run.events)
        yield _counter(p + "uncaptioned_events", "Events with no moving object followed", run.nothing_followed)
        yield _counter(p + "source_stalls", "Times the source gave no frame for the stall time", run.stalls)
        yield _counter(p + "captions", "Captions verified and published (one session each)", len(captions))
        yield _counter(p + "sent_bytes", "Bytes the sessions sent (whole PUBLISH packets)",
                       sum(c.bytes_up for c in captions))
        yield _counter(p + "received_bytes", "Bytes the sessions received (whole PUBLISH packets)",
                       sum(c.bytes_down for c in captions))
        yield _counter(p + "jpeg_keyframe_bytes", "Bytes the events' two JPEG key frames would have cost",
                       sum(c.jpeg_bytes_keyframes for c in captions))
        yield _counter(p + "rounds", "Draft/verify rounds", sum(c.rounds for c in captions))
        yield _counter(p + "resyncs", "Sessions re-opened after a RESYNC", sum(s.resyncs for s in sessions))
        lengths: dict[float, int] = {}  # histogram_from_counts's values (whole numbers here)
        drafted = accepted = 0
        for s in sessions:
            for n in s.result.accepted_per_round:
                lengths[n] = lengths.get(n, 0) + 1
            drafted += sum(s.result.drafted_per_round)
            accepted += sum(s.result.accepted_per_round)
        yield histogram_from_counts(p + "accepted_length", "Drafts accepted per round", lengths,
                                    range(int(max([8, *lengths])) + 1), sum(k * n for k, n in lengths.items()))
        yield _counter(p + "drafted_tokens", "Tokens drafted", drafted)
        yield _counter(p + "accepted_tokens", "Drafted tokens accepted", accepted)
        rounds: dict[float, int] = {}
        for s in sessions:
            for seconds in s.round_seconds:
                rounds[seconds] = rounds.get(seconds, 0) + 1
        yield histogram_from_counts(p + "round_duration_seconds", "Seconds from sending a block to its verdict",
                                    rounds, ROUND_BUCKETS_S, sum(k * n for k, n in rounds.items()))


def registry_for(collector) -> CollectorRegistry:
    """A registry of its own holding `collector` (no process-global state)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return registry


async def serve_metrics(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> asyncio.Server:
    """Serve ``GET /metrics`` (and ``/``) in the Prometheus text format on the running loop.
    Port 0 picks a free one (``server.sockets[0].getsockname()[1]``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path = (request.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            path = path.split(b"?", 1)[0]
            if method in (b"GET", b"HEAD") and path in (b"/metrics", b"/"):
                body, status, kind = generate_latest(registry), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, kind = b"only GET /metrics here\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + (body if method != b"HEAD" else b""))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        return await asyncio.start_server(handle, host, port)
    except OSError as exc:
        raise MetricsPortError(f"metrics endpoint cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def metrics_url(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"http://{host}:{port}/metrics"
