"""`edgespec dashboard` in a real headless Chromium against a real Mosquitto (development config,
websockets listener on a free port): tiles, captions, availability, the verifier strip,
hostile payloads, and each camera's mode: unverified edge-only captions replaced in place by
their verified captions, the count waiting, the link measurements. Skipped only where
Chromium, Node or playwright-core are missing (`make setup` installs them)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from camera_node.link import EdgeLink
from camera_node.session import EdgeRequest, result_message, run_edge_session
from conftest import REPO, dev_keys
from dashboard_browser import Browser, missing
from edgespec.dashboard import DashboardServer, page_config
from transport.client import make_client
from schemas import ResultMsg, Topics
from schemas.results import VerifiedMsg

pytestmark = pytest.mark.broker
needs_browser = pytest.mark.skipif(missing() is not None, reason=str(missing()))

PREFIX = "dashtest/v1"


@pytest.fixture(scope="module")
def browser():
    if missing() is not None:
        pytest.skip(str(missing()))
    with Browser() as b:
        yield b


def tile(device: str) -> str:
    return f'document.querySelector(\'.tile[data-device="{device}"]\')'


def camera_result(device: str, text: str, n_tokens: int = 12) -> ResultMsg:
    """A result as camera_node.node.describe_event publishes it (same fields, same extra)."""
    return ResultMsg(device_id=device, session_id="ab" * 16, ts=time.time(), text=text,
                     token_ids=list(range(n_tokens)), rounds=4, acceptance_rate=0.75, mean_accepted=2.25,
                     bytes_up=1536, bytes_down=420,
                     extra={"verifier_id": "verifier-1", "feature_bytes": 1024,
                            "event": {"start_t": 3.2, "end_t": 5.8, "frames": 14, "peak_area": 0.08},
                            "jpeg_bytes_keyframes": 48_000, "jpeg_bytes_clip": 310_000})


async def on_thread(fn, *args, **kw):
    return await asyncio.to_thread(fn, *args, **kw)


@needs_browser
def test_tile_caption_offline_and_rejected(mosquitto, browser):
    topics = Topics(PREFIX)
    with DashboardServer(page_config(broker_ws=mosquitto.ws_url, prefix=PREFIX)) as server:
        browser.open(server.url)
        browser.wait("document.body.dataset.mqtt === 'connected'", timeout_s=10)

        async def scenario() -> dict:
            async with make_client(mosquitto.url, client_id="dashtest-hostile") as hostile:
                async with EdgeLink(mosquitto.url, "cam-1", topics=topics, keys=dev_keys("cam-1")) as link:
                    # The link announces itself `online` (retained, Last Will `offline`).
                    await on_thread(browser.wait, f"{tile('cam-1')}?.classList.contains('online')")

                    # Hostile input first: none of it may show, each is counted.
                    bad = [(topics.result("cam-1"), b"{not json"),
                           (topics.result("cam-1"), b"\xff\xfe\x00"),
                           (topics.result("cam-1"), json.dumps({"v": 1, "device_id": "cam-1", "text": 5}).encode()),
                           (topics.result("cam-1"), camera_result("cam-9", "wrong device").to_json()),
                           (topics.device_status("cam-1"), b"<script>alert(1)</script>"),
                           (topics.verifier_stats("v-x"), b"[1, 2]")]
                    for topic, payload in bad:
                        await hostile.publish(topic, payload, qos=1)
                    await on_thread(browser.wait, f"window.edgespec.rejected === {len(bad)}")
                    assert browser.eval(f"{tile('cam-1')}.querySelector('.caption').textContent") == "no caption yet"
                    assert browser.eval(f"{tile('cam-1')}.classList.contains('online')")
                    assert browser.eval("document.querySelector('#rejected').textContent") == str(len(bad))
                    assert browser.eval("document.querySelectorAll('.tile').length") == 1
                    assert browser.eval("document.querySelectorAll('.verifier').length") == 0

                    caption = "a person in a red coat walks past the loading dock <b>not bold</b>"
                    result = camera_result("cam-1", caption)
                    t_publish = time.time()
                    await link.publish_result(result)
                    shown = await on_thread(
                        browser.wait,
                        f"(() => {{ const c = {tile('cam-1')}.querySelector('.caption'); "
                        f"return c.textContent === {json.dumps(caption)} && Number(c.dataset.receivedAt); }})()")
                    t_seen = time.time()
                    text = browser.eval(f"{tile('cam-1')}.innerText")
                    # A result without mode, verified or link (an older camera's): hybrid, not
                    # marked unverified, no link row, nothing waiting.
                    assert browser.eval(f"{tile('cam-1')}.querySelector('.mode').dataset.mode") == "hybrid"
                    assert browser.eval(f"{tile('cam-1')}.querySelector('.flag').hidden")
                    assert browser.eval(f"{tile('cam-1')}.querySelector('.caption').dataset.verified") == "no"
                    assert browser.eval(f"{tile('cam-1')}.querySelector('.link').hidden")
                    assert browser.eval(f"{tile('cam-1')}.querySelector('.waiting').hidden")
                # Leaving the link publishes the retained `offline`, as a camera that stops does.
                await on_thread(browser.wait, f"{tile('cam-1')}.classList.contains('offline')")
                grey = browser.eval(f"getComputedStyle({tile('cam-1')}).filter")
            return {"publish_to_render_ms": shown - t_publish * 1000, "publish_to_seen_ms": (t_seen - t_publish) * 1000,
                    "text": text, "grey": grey}

        out = asyncio.run(scenario())
    print(f"\ndashboard: caption rendered {out['publish_to_render_ms']:.0f} ms after its publish "
          f"(seen by the test {out['publish_to_seen_ms']:.0f} ms after)")
    assert out["publish_to_render_ms"] < 5000 and out["publish_to_seen_ms"] < 5000
    assert "75%" in out["text"] and "3.25" in out["text"]          # acceptance, tokens/round
    assert "1.5 KiB vs 46.9 KiB" in out["text"] and "31× less" in out["text"]  # bytes vs JPEG
    assert "3.2–5.8 s" in out["text"]                               # event time
    assert "grayscale" in out["grey"]


def mode_result(device: str, session: str, text: str, n_tokens: int = 9, **extra) -> ResultMsg:
    """A result of a camera that chooses its mode: `extra` adds mode, verified, replaces, link..."""
    return ResultMsg(device_id=device, session_id=session, ts=time.time(), text=text,
                     token_ids=list(range(n_tokens)), rounds=3, acceptance_rate=0.8, mean_accepted=2.4,
                     bytes_up=900, bytes_down=300,
                     extra={"verifier_id": "verifier-1", "event": {"start_t": 1.0, "end_t": 2.5}, **extra})


ENTRIES = "(() => {{ const t = {tile}; return [t.querySelector('.caption').dataset.session, " \
          "...[...t.querySelectorAll('ol.history li')].map(li => li.dataset.session)]; }})()"


@needs_browser
def test_modes_unverified_captions_replaced_in_place_and_link(mosquitto, browser):
    """A camera's latest mode as a badge; an edge-only caption marked unverified (and counted)
    until its verified caption (`replaces`) takes its place, in the main caption or in the
    history; the link measurements; hostile text shown as text; bad JSON only counted."""
    topics = Topics(PREFIX)
    cam = "cam-modes"
    t = tile(cam)
    hostile = '<img src=x onerror="window.__pwned = 1">draft <b>only</b>'
    s0, s1, s2, r1, r2 = ("a0" * 16, "b1" * 16, "c2" * 16, "d3" * 16, "e4" * 16)
    with DashboardServer(page_config(broker_ws=mosquitto.ws_url, prefix=PREFIX)) as server:
        browser.open(server.url)
        browser.wait("document.body.dataset.mqtt === 'connected'", timeout_s=10)

        async def publish(client, msg) -> None:
            await client.publish(topics.result(cam), msg.to_json(), qos=1)

        async def scenario() -> None:
            async with make_client(mosquitto.url, client_id="dashtest-modes") as client:
                # Hybrid with the camera's link measurements.
                link = {"rtt_ms": 42.37, "acceptance": 0.8123, "draft_ms_per_token": 0.043, "verify_ms": 12.5,
                        "gamma": 4}
                await publish(client, mode_result(cam, s0, "a person walks to the door", mode="hybrid", link=link))
                await on_thread(browser.wait, f"{t}?.querySelector('.caption').dataset.session === '{s0}'")
                assert browser.eval(f"{t}.querySelector('.mode').dataset.mode") == "hybrid"
                assert browser.eval(f"{t}.querySelector('.mode').textContent") == "hybrid"
                shown = browser.eval(f"{t}.querySelector('.link').innerText")
                assert "RTT 42.4 ms" in shown and "acceptance 81%" in shown and "\u03b3 4" in shown, shown
                assert "draft 0.04 ms/token" in shown and "verify 12.5 ms" in shown, shown
                assert browser.eval(f"{t}.querySelector('.link b[data-k=gamma]').textContent") == "4"

                # Edge-only, unverified, with hostile text: shown as text, flagged, counted.
                await publish(client, mode_result(cam, s1, hostile, mode="edge_only", verified=False))
                await on_thread(browser.wait, f"{t}.querySelector('.caption').dataset.session === '{s1}'")
                assert browser.eval(f"{t}.querySelector('.caption').textContent") == hostile
                assert browser.eval(f"{t}.querySelector('img, b:not([data-k])')") is None
                assert browser.eval("window.__pwned === undefined")
                assert browser.eval(f"{t}.querySelector('.caption').dataset.verified") == "unverified"
                assert browser.eval(f"!{t}.querySelector('.flag').hidden")
                assert browser.eval(f"{t}.querySelector('.flag').textContent") == "unverified — draft only"
                assert "unverified — draft only" in browser.eval(f"{t}.querySelector('.when').textContent")
                assert browser.eval(f"{t}.querySelector('.mode').dataset.mode") == "edge_only"
                assert browser.eval(f"{t}.querySelector('.mode').textContent") == "edge only"
                assert browser.eval(f"{t}.querySelector('.waiting').dataset.count") == "1"
                assert browser.eval(f"{t}.querySelector('.metric .v').textContent") == "–"  # no verifier: no acceptance
                # The link row keeps the latest measurements a result carried.
                assert "RTT 42.4 ms" in browser.eval(f"{t}.querySelector('.link').innerText")

                # A second one; the first moves to the history, still unverified.
                await publish(client, mode_result(cam, s2, "a dog crosses the yard", mode="edge_only", verified=False))
                await on_thread(browser.wait, f"{t}.querySelector('.waiting').dataset.count === '2'")
                assert browser.eval(ENTRIES.format(tile=t)) == [s2, s1, s0]
                assert browser.eval(f"{t}.querySelector('ol.history li').dataset.verified") == "unverified"
                assert "unverified — draft only" in browser.eval(f"{t}.querySelector('ol.history li').innerText")
                assert browser.eval("document.querySelector('#n-unverified').textContent") == "2"

                # Bad JSON on the result topic: counted, nothing else changes.
                rejected = browser.eval("window.edgespec.rejected")
                await client.publish(topics.result(cam), b"{\"v\": 1, oops", qos=1)
                await on_thread(browser.wait, f"window.edgespec.rejected === {rejected + 1}")
                assert browser.eval(ENTRIES.format(tile=t)) == [s2, s1, s0]

                # The verified caption of s1 replaces it in its history row.
                await publish(client, mode_result(cam, r1, "a man in a red coat walks to the door", mode="hybrid",
                                                  replaces=s1, replayed_accepted=7, offline_tokens=9))
                await on_thread(browser.wait, f"{t}.querySelector('.waiting').dataset.count === '1'")
                assert browser.eval(ENTRIES.format(tile=t)) == [s2, r1, s0]
                row = f"{t}.querySelector('ol.history li[data-session=\"{r1}\"]')"
                assert browser.eval(f"{row}.dataset.verified") != "unverified"
                assert "a man in a red coat walks to the door" in browser.eval(f"{row}.textContent")
                assert "verified later; 7 of 9 offline tokens kept" in browser.eval(f"{row}.textContent")
                assert "unverified" not in browser.eval(f"{row}.textContent")
                assert browser.eval(f"{t}.querySelector('.mode').dataset.mode") == "hybrid"

                # The verified caption of s2 replaces the main caption; then a verifier vouches for it.
                text2 = "a brown dog crosses the yard"
                r2_msg = mode_result(cam, r2, text2, n_tokens=7, mode="hybrid", replaces=s2, replayed_accepted=5,
                                     offline_tokens=6)
                await publish(client, r2_msg)
                await on_thread(browser.wait, f"{t}.querySelector('.caption').dataset.session === '{r2}'")
                assert browser.eval(ENTRIES.format(tile=t)) == [r2, r1, s0]
                assert browser.eval(f"{t}.querySelector('.caption').textContent") == text2
                assert browser.eval(f"{t}.querySelector('.caption').dataset.verified") == "no"
                assert browser.eval(f"{t}.querySelector('.flag').hidden")
                assert browser.eval(f"{t}.querySelector('.waiting').hidden")
                assert browser.eval(f"{t}.querySelector('.waiting').dataset.count") == "0"
                assert browser.eval("document.querySelector('#n-unverified').textContent") == "0"
                when = browser.eval(f"{t}.querySelector('.when').textContent")
                assert "verified later; 5 of 6 offline tokens kept" in when
                verified = VerifiedMsg(device_id=cam, session_id=r2, verifier_id="verifier-1", ts=time.time(),
                                       token_ids=r2_msg.token_ids, text=text2)
                await client.publish(topics.verified(cam), verified.to_json(), qos=1)
                await on_thread(browser.wait, f"{t}.querySelector('.caption').dataset.verified === 'yes'")
                when = browser.eval(f"{t}.querySelector('.when').textContent")
                assert "verified by verifier-1" in when and "verified later; 5 of 6 offline tokens kept" in when
                assert browser.eval("document.querySelector('.tile[data-device=\"cam-modes\"]').querySelectorAll("
                                    "'.caption, ol.history li').length") == 3

                # Cloud only (the hyphenated spelling is read too), and an unknown mode and a broken
                # link object: shown, never breaking the tile.
                await publish(client, mode_result(cam, "f5" * 16, "a cat sits", mode="cloud-only"))
                await on_thread(browser.wait, f"{t}.querySelector('.mode').dataset.mode === 'cloud_only'")
                assert browser.eval(f"{t}.querySelector('.mode').textContent") == "cloud only"
                await publish(client, mode_result(cam, "06" * 16, "a bird lands", mode="<b>warp</b>", link="fast",
                                                  verified="no"))
                await on_thread(browser.wait, f"{t}.querySelector('.mode').dataset.mode === 'unknown'")
                assert browser.eval(f"{t}.querySelector('.caption').dataset.verified") == "no"
                assert "RTT 42.4 ms" in browser.eval(f"{t}.querySelector('.link').innerText")
                assert browser.eval("window.edgespec.rejected") == rejected + 1

        asyncio.run(scenario())


@needs_browser
def test_real_verifier_session_and_fleet_strip(mosquitto, verifier, loaded_pair, browser):
    """A real edge session through the session verifier: its result tile and the verifier's
    availability and stats (published every 5 s) in the fleet strip."""
    target, draft = loaded_pair
    with DashboardServer(page_config(broker_ws=mosquitto.ws_url, prefix="edgespec/v1")) as server:
        browser.open(server.url)
        browser.wait("document.body.dataset.mqtt === 'connected'", timeout_s=10)
        # The verifier's retained `online`.
        browser.wait("document.querySelector('.verifier[data-verifier=\"verifier-1\"]:not(.offline) .pill')"
                     "?.textContent === 'online'")

        async def session() -> tuple[ResultMsg, float]:
            async with EdgeLink(mosquitto.url, "dash-cam", keys=dev_keys("dash-cam")) as link:
                ids = target.encode("a red circle moves")
                outcome = await run_edge_session(link, draft, EdgeRequest(ids, None, gamma=3, max_new_tokens=16))
                msg = result_message(link.device_id, outcome, draft.decode(outcome.result.token_ids))
                t0 = time.time()
                await link.publish_result(msg)
                await on_thread(browser.wait, f"{tile('dash-cam')}?.querySelector('.caption').dataset.session "
                                              f"=== {json.dumps(msg.session_id)}")
                return msg, time.time() - t0

        msg, seconds = asyncio.run(session())
        assert seconds < 5
        shown = browser.eval(f"{tile('dash-cam')}.querySelector('.caption').textContent")
        assert shown == (msg.text or "(empty caption)")
        # Stats arrive every 5 s; then the strip shows sessions and batch sizes.
        strip = browser.wait("(() => { const v = document.querySelector('.verifier[data-verifier=\"verifier-1\"]');"
                             " return v && v.innerText.includes(' mean, ') && v.innerText; })()", timeout_s=12)
        assert "sessions" in strip and "mean" in strip
        assert browser.eval("window.edgespec.rejected") == 0


def test_dashboard_command_serves_the_page_and_stops_on_sigterm(tmp_path):
    """`edgespec dashboard`: the page, its vendored mqtt.js and config.json over HTTP, nothing
    outside the package, security headers; SIGTERM ends it within 2 s with status 0."""
    password = tmp_path / "dashboard.password"
    password.write_text("s3cret\n")
    proc = subprocess.Popen([sys.executable, "-m", "edgespec.cli", "dashboard", "--http-port", "0",
                             "--broker-ws", "ws://127.0.0.1:9101", "--prefix", "site/v1", "--username", "dashboard",
                             "--password-file", str(password)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert "dashboard on http://127.0.0.1:" in line, line
        base = line.split("dashboard on ", 1)[1].split()[0]

        def get(path: str):
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, r.headers, r.read()

        status, headers, body = get("")
        assert status == 200 and b'src="vendor/mqtt.min.js"' in body and b"//" not in body.split(b"<body")[0].replace(
            b"http://www.w3.org", b"")  # nothing from another origin
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert get("config.json")[2] and json.loads(get("config.json")[2]) == {
            "broker_ws": "ws://127.0.0.1:9101", "default_ws_port": 9001, "prefix": "site/v1",
            "username": "dashboard", "password": "s3cret"}
        status, headers, body = get("vendor/mqtt.min.js")
        assert status == 200 and body.startswith(b"/*! mqtt.js 5.") and b"MIT License" in body[:300]
        assert headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
        for bad in ("../__init__.py", "%2e%2e/__init__.py", "vendor/", "nothing.js"):
            with pytest.raises(urllib.error.HTTPError) as err:
                get(bad)
            assert err.value.code == 404, bad
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=2) == 0 and time.monotonic() - t0 < 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
