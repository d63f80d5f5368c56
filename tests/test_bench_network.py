"""`edgespec bench --rtt`: every mode through the project's network emulator and a real
Mosquitto, on the built-in pair (a short run; the figures themselves are in docs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.broker


def test_rtt_bench_runs_every_mode_exactly_and_feels_the_delay(tmp_path):
    out, png = tmp_path / "rtt.json", tmp_path / "rtt.png"
    proc = subprocess.run([sys.executable, "-m", "edgespec.cli", "bench", "--rtt", "0,40", "--prompts", "1",
                           "--reps", "1", "--max-new-tokens", "16", "--json", str(out), "--plot", str(png)],
                          check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {(r["rtt_ms"], r["mode"]): r for r in result["rows"]}
    assert len(rows) == 2 * 8
    for (rtt, mode), r in rows.items():
        assert r["captions"] == 1 and r["tokens"] > 0
        if mode != "edge-only":  # every verified caption is the target's own greedy caption
            assert r["exact"] == 1, (rtt, mode)
    cloud = rows[(40.0, "cloud-only")]
    assert cloud["rounds"] == cloud["tokens"]  # one streamed VERDICT per token
    # The delay is real: a round trip per round, at least (lower bounds only: the machine is noisy).
    g1 = rows[(40.0, "hybrid g1")]
    assert g1["caption_s"] >= 0.9 * 0.040 * g1["rounds"]
    assert cloud["caption_s"] >= 0.9 * 0.040
    assert set(result["summary"]["capacity_hybrid_over_cloud"]) == {"0.0", "40.0"}
    import cv2

    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400


def test_a_bad_rtt_list_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "edgespec.cli", "bench", "--rtt", "10,fast"], cwd=REPO,
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--rtt" in proc.stderr and "Traceback" not in proc.stderr


def test_pipelining_bound_counts_only_rounds_that_accept_every_draft():
    from edgespec.bench_network import pipelining_bound
    from speculative.gamma_control import Timing

    t = Timing(draft_s=0.005, rtt_s=0.025, verify_base_s=0.08)  # 8 drafts: 40 ms drafting, 105 ms waiting
    assert pipelining_bound(t, 8, 1.0) == pytest.approx(0.145 / 0.105)  # all hidden
    assert pipelining_bound(t, 8, 0.5) == pytest.approx(0.145 / 0.125)  # half the rounds
    assert pipelining_bound(t, 8, 0.0) == pytest.approx(1.0)
    slow = Timing(draft_s=0.05, rtt_s=0.0, verify_base_s=0.1)  # drafting 400 ms: at most the wait is hidden
    assert pipelining_bound(slow, 8, 1.0) == pytest.approx(0.5 / 0.4)
