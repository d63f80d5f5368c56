"""Where a round through the broker loses time against the in-process loop, from the figures
of one `edgespec bench` run.

A round of (d) does what a round of (b) does, plus: the target's forward runs in another
process (the verifier, which waited for the device in between), the verifier does its
per-message work (decode, open the envelope, validate, keep the session, judge, seal the
reply), and the block and its verdict cross the broker. The bench measures each part in the
same run:

- (b)'s round and the part of it in the target's verification calls (in-process timers);
- the verifier's mean time per single-message batch, in all and in the model (its own timers,
  from the final stats it publishes when it stops; see `verifier_node.timing`);
- the model-free encrypted round trip (both clients' publish and read, the broker's two hops,
  encoding, sealing and opening at both ends, against the null verifier).

`ceiling` is what (d)/(b) would be if a round through the broker cost (b)'s round plus only
the model-free round trip (`transport`), and plus the verifier's slower forward too
(`with_forward`), less the most that drafting ahead could hide: the device drafts the next
block while it waits, which saves a round its drafting time when every draft is accepted.
The verifier's other per-message work is left out of both, so they are generous.
"""

from __future__ import annotations

import subprocess

from .verifier_stats import StatsWatcher


async def stop_for_final_stats(url: str, topic: str, proc: subprocess.Popen, timeout_s: float = 10.0) -> dict | None:
    """Stop the verifier `proc` (SIGTERM) and return the final stats it publishes on `topic`
    (None if none came within `timeout_s`)."""
    async with StatsWatcher(url, topic) as watcher:
        stats = await watcher.stop([proc], timeout_s)
    return next((body for body in stats.values() if body.get("final")), None)


def round_costs(b, d, verifier_stats: dict | None, null_mean_ms: float) -> dict | None:
    """Per-round milliseconds of (b) and (d) (bench ModeResults) and their parts; None when a
    part is missing (no rounds, no verifier stats)."""
    single = ((verifier_stats or {}).get("batch_times") or {}).get("single") or {}
    if not b.rounds or not d.rounds or not single.get("batches"):
        return None
    b_round = b.seconds / b.rounds * 1e3
    d_round = d.seconds / d.rounds * 1e3
    forward_b = b.target_seconds / b.rounds * 1e3
    forward_v = single["model_ms"]["mean"]
    drafting = b_round - forward_b  # the device's part of a round: drafting and the loop's own work
    hidden = d.full_rounds / d.rounds * drafting  # the most drafting ahead can save a round, on average
    slower_forward = max(0.0, forward_v - forward_b)
    return {
        "b_round_ms": b_round, "d_round_ms": d_round,
        "forward_in_process_ms": forward_b, "forward_in_verifier_ms": forward_v,
        "forward_in_verifier_cpu_ms": single["model_cpu_ms"]["mean"],
        "verifier_other_ms": single["other_ms"]["mean"], "verifier_batches": single["batches"],
        "null_round_trip_mean_ms": null_mean_ms,
        "full_round_share": d.full_rounds / d.rounds, "draft_ahead_can_hide_ms": hidden,
        "ceiling": {
            "transport": b_round / (b_round + null_mean_ms - hidden),
            "with_forward": b_round / (b_round + null_mean_ms + slower_forward - hidden),
        },
    }


def print_round_costs(name: str, rc: dict | None) -> None:
    if rc is None:
        print(f"{name}: no per-round breakdown (the verifier's stats did not arrive)")
        return
    print(f"{name}, per round (means): (b) {rc['b_round_ms']:.2f} ms in-process, (d) {rc['d_round_ms']:.2f} ms "
          f"through the broker ({rc['d_round_ms'] - rc['b_round_ms']:+.2f})")
    print(f"  target forward and verification: {rc['forward_in_process_ms']:.2f} ms in-process, "
          f"{rc['forward_in_verifier_ms']:.2f} ms in the verifier "
          f"({rc['forward_in_verifier_ms'] - rc['forward_in_process_ms']:+.2f}; CPU time "
          f"{rc['forward_in_verifier_cpu_ms']:.2f} ms)")
    print(f"  the verifier's other work per message {rc['verifier_other_ms']:.2f} ms; model-free encrypted round "
          f"trip {rc['null_round_trip_mean_ms']:.2f} ms; drafting ahead can hide at most "
          f"{rc['draft_ahead_can_hide_ms']:.2f} ms ({rc['full_round_share']:.0%} of rounds accept every draft)")
    c = rc["ceiling"]
    print(f"  (d)/(b) at most {c['transport']:.2f} if a round added only the model-free round trip, "
          f"{c['with_forward']:.2f} with the verifier's forward as measured too")
