"""docs/dashboard.png from a real run: a development Mosquitto, a verifier and four synthetic
cameras with the default model pair, the dashboard, and headless Chromium. One camera is stopped
before the picture so an offline (grey) tile shows too.

    .venv/bin/python tests/browser/screenshot.py [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from broker.runner import MosquittoBroker  # noqa: E402
from dashboard_browser import Browser, missing  # noqa: E402
from edgespec.toolkit import drain  # noqa: E402
from edgespec.dashboard import DashboardServer, page_config  # noqa: E402
from edgespec.demo import _spawn  # noqa: E402

CAMERAS = ["cam-lobby", "cam-dock", "cam-gate", "cam-yard"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(TESTS.parent / "docs" / "dashboard.png"))
    ap.add_argument("--events", type=int, default=8)
    args = ap.parse_args()
    if missing():
        sys.exit(missing())
    procs = []
    with MosquittoBroker(port=0) as broker, \
            DashboardServer(page_config(broker_ws=broker.ws_url, prefix="edgespec/v1")) as web, Browser() as browser:
        try:
            verifier = _spawn(["verifier", "--broker", broker.url, "--target-model", "default"], procs)
            for line in verifier.stdout:
                if "ready on" in line:
                    drain(verifier)
                    break
            browser.open(web.url, width=1360, height=1000)
            browser.wait("document.body.dataset.mqtt === 'connected'", timeout_s=10)
            for i, cam in enumerate(CAMERAS):
                _spawn(["camera", "--broker", broker.url, "--device-id", cam,
                        "--source", f"synthetic:{7 + 100 * i}", "--max-events", str(args.events),
                        "--realtime", "--seed", str(i)], procs)
                drain(procs[-1])
            # Every camera with at least four captions, and the verifier's stats in the strip.
            browser.wait("[...document.querySelectorAll('.tile')].filter(t => t.querySelectorAll('ol.history li')"
                         ".length >= 3).length >= 4", timeout_s=240)
            browser.wait("document.querySelector('.verifier')?.innerText.includes(' mean, ')", timeout_s=15)
            procs[-1].send_signal(signal.SIGINT)  # cam-yard stops: its tile turns grey
            browser.wait("document.querySelector('.tile[data-device=\"cam-yard\"]').classList.contains('offline')",
                         timeout_s=15)
            browser.wait("window.edgespec.fleetRate.length >= 3", timeout_s=10)
            browser.screenshot(Path(args.out))
            print(f"wrote {args.out}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
