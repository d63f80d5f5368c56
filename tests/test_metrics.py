"""Prometheus metrics and JSON logs: a real verifier process (`--metrics-port`, `--log-json`)
serves sessions through a real Mosquitto and its endpoint is scraped over HTTP; a camera run
serves its own; a port in use is a one-line error."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.runner import free_port
from camera_node.node import CameraConfig, CameraRun, run_camera
from camera_node.session import EdgeRequest, run_edge_session
from conftest import REPO, dev_keys, open_links, stop_process
from edgespec.metrics import CameraCollector, MetricsPortError, metrics_url, registry_for, serve_metrics
from transport.client import make_client
from schemas import Topics
from schemas.messages import decode
from speculative.models import load_lm

pytestmark = pytest.mark.broker
PREFIX = "metrics-test/v1"


def scrape(url: str) -> dict:
    """{family name: family} from one HTTP GET of the endpoint."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict, name: str, sample: str | None = None, **labels) -> float:
    family = families[name]
    sample = sample or name
    for s in family.samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((sample, labels))


@pytest.fixture
def metrics_verifier(mosquitto, tiny_pair, tmp_path):
    """`edgespec verifier --metrics-port P --log-json -v` on its own prefix; (process, url, log file)."""
    port, log_path = free_port(), tmp_path / "verifier.log"
    log_file = open(log_path, "w")  # noqa: SIM115 (the verifier's stderr while it runs; closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgespec.cli", "verifier", "--broker", mosquitto.url, "--prefix", PREFIX,
         "--target-model", str(tiny_pair[0]), "--verifier-id", "verifier-metrics", "--metrics-port", str(port),
         "--metrics-host", "127.0.0.1", "--log-json", "-v", "--busy-poll-ms", "0"],
        stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    for line in proc.stdout:  # the metrics line comes first, then "ready on"
        lines.append(line)
        if "ready on" in line:
            break
    assert any(f"metrics on http://127.0.0.1:{port}/metrics" in line for line in lines), lines
    yield proc, f"http://127.0.0.1:{port}/metrics", log_path
    stop_process(proc)
    log_file.close()


def test_verifier_metrics_after_real_sessions(metrics_verifier, tiny_pair):
    proc, url, log_path = metrics_verifier
    draft = load_lm(tiny_pair[1])
    before = scrape(url)
    assert value(before, "edgespec_verifier_sessions_opened", "edgespec_verifier_sessions_opened_total") == 0

    async def sessions():
        links = await open_links(mosquitto_url(proc), "metrics-dev", PREFIX, 2)
        try:
            req = EdgeRequest(draft.encode("the red car"), max_new_tokens=12, gamma=4)
            outcomes = await asyncio.gather(*(run_edge_session(link, draft, req) for link in links))
            # A malformed OPEN: the verifier counts it and answers with an ERROR on the downlink.
            async with make_client(mosquitto_url(proc), client_id="metrics-bad") as bad:
                await bad.subscribe(Topics(PREFIX).down("metrics-bad"), qos=1)
                await bad.publish(Topics(PREFIX).open("metrics-bad"), b"\xc1 not msgpack", qos=1)
                async for message in bad.messages:
                    assert decode(message.payload).code == 1  # malformed
                    break
            return outcomes
        finally:
            for link in links:
                await link.__aexit__(None, None, None)

    outcomes = asyncio.run(asyncio.wait_for(sessions(), 60))
    after = scrape(url)
    types = {name: family.type for name, family in after.items() if name.startswith("edgespec_verifier_")}
    expected = {
        "edgespec_verifier_sessions": "gauge", "edgespec_verifier_sessions_opened": "counter",
        "edgespec_verifier_evictions": "counter", "edgespec_verifier_resyncs": "counter",
        "edgespec_verifier_accepted_length": "histogram", "edgespec_verifier_position_judged": "counter",
        "edgespec_verifier_position_accepted": "counter", "edgespec_verifier_position_acceptance_ratio": "gauge",
        "edgespec_verifier_batch_size": "histogram", "edgespec_verifier_batch_duration_seconds": "histogram",
        "edgespec_verifier_rejected_messages": "counter", "edgespec_verifier_received_bytes": "counter",
        "edgespec_verifier_sent_bytes": "counter",
    }
    for name, kind in expected.items():
        assert types.get(name) == kind, (name, types.get(name))
    rounds = sum(o.result.rounds for o in outcomes)
    assert value(after, "edgespec_verifier_sessions_opened", "edgespec_verifier_sessions_opened_total") == 2
    assert value(after, "edgespec_verifier_verified_blocks", "edgespec_verifier_verified_blocks_total") == rounds
    assert value(after, "edgespec_verifier_accepted_length", "edgespec_verifier_accepted_length_count") == rounds
    accepted = sum(sum(o.result.accepted_per_round) for o in outcomes)
    assert value(after, "edgespec_verifier_accepted_length", "edgespec_verifier_accepted_length_sum") == accepted
    drafting_rounds = sum(1 for o in outcomes for k in o.result.drafted_per_round if k > 0)  # last may draft 0
    assert value(after, "edgespec_verifier_position_judged", "edgespec_verifier_position_judged_total",
                 position="0") == drafting_rounds
    # Two sessions at once: their blocks share batches, so fewer batches than rounds.
    assert value(after, "edgespec_verifier_batch_duration_seconds",
                 "edgespec_verifier_batch_duration_seconds_count") >= rounds / 2
    assert value(after, "edgespec_verifier_batch_duration_seconds",
                 "edgespec_verifier_batch_duration_seconds_sum") > 0
    assert value(after, "edgespec_verifier_received_messages", "edgespec_verifier_received_messages_total") \
        == rounds + 1  # each round's block (the first in its OPEN), and the malformed one
    assert value(after, "edgespec_verifier_batch_size", "edgespec_verifier_batch_size_count") >= 1
    assert value(after, "edgespec_verifier_rejected_messages", "edgespec_verifier_rejected_messages_total",
                 reason="malformed") == 1
    assert value(after, "edgespec_verifier_received_bytes", "edgespec_verifier_received_bytes_total") > 0
    assert value(after, "edgespec_verifier_sent_bytes", "edgespec_verifier_sent_bytes_total") > 0
    # Structured logs: every record a JSON object with time, level, logger and message.
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    serving = [r for r in records if "serving on" in r["message"]]
    assert serving and serving[0]["logger"] == "edgespec.verifier" and serving[0]["level"] == "INFO"
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)


def mosquitto_url(proc) -> str:
    """The broker URL the verifier process was given."""
    return proc.args[proc.args.index("--broker") + 1]


class TextOnly:
    """Captions from the prompt alone (the tiny pair has no vision projector)."""

    def extract(self, event):
        return None


def test_camera_metrics_after_a_caption(mosquitto, verifier, tiny_pair):
    draft = load_lm(tiny_pair[1])
    cfg = CameraConfig(device_id="cam-metrics", source="synthetic:5", broker=mosquitto.url,
                       keys=dev_keys("cam-metrics"), max_events=1, max_new_tokens=8)
    run = CameraRun()

    async def scenario():
        server = await serve_metrics(registry_for(CameraCollector(run)), 0, "127.0.0.1")
        try:
            await run_camera(cfg, draft, TextOnly(), run=run)
            return await asyncio.to_thread(scrape, metrics_url(server))
        finally:
            server.close()

    families = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert families["edgespec_camera_round_duration_seconds"].type == "histogram"
    assert value(families, "edgespec_camera_captions", "edgespec_camera_captions_total") == 1
    rounds = run.captions[0].rounds
    assert value(families, "edgespec_camera_round_duration_seconds",
                 "edgespec_camera_round_duration_seconds_count") == rounds
    assert value(families, "edgespec_camera_accepted_length", "edgespec_camera_accepted_length_count") == rounds
    assert value(families, "edgespec_camera_sent_bytes", "edgespec_camera_sent_bytes_total") == run.captions[0].bytes_up
    assert value(families, "edgespec_camera_frames", "edgespec_camera_frames_total") == run.frames > 0


def test_metrics_port_in_use_is_a_one_line_error():
    async def scenario():
        first = await serve_metrics(registry_for(CameraCollector(CameraRun())), 0, "127.0.0.1")
        port = first.sockets[0].getsockname()[1]
        try:
            with pytest.raises(MetricsPortError) as err:
                await serve_metrics(registry_for(CameraCollector(CameraRun())), port, "127.0.0.1")
            assert "\n" not in str(err.value) and str(port) in str(err.value)
            status = await asyncio.to_thread(_status, f"http://127.0.0.1:{port}/other")
            assert status == 404
        finally:
            first.close()

    asyncio.run(scenario())


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
