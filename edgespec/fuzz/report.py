"""The run's report: the checks, the JSON document and the printed summary."""

from __future__ import annotations

from collections import Counter

from .campaign import FuzzConfig
from .contract import NON_REJECTIONS
from .system import DeviceRecord
from .tally import Tally, counter_delta


def _stats_delta(before: dict | None, after: dict | None, key: str) -> Counter:
    if after is None:
        return Counter()
    return counter_delta((before or {}).get(key, {}), after.get(key, {}))


def build_report(cfg: FuzzConfig, kinds: set[str], tally: Tally, baseline: dict | None, final: dict | None,
                 records: list[DeviceRecord], rss: dict, *, alive: bool, attack_s: float, spoof_seen: Counter,
                 verifier_log: list[str], tracebacks: int, queue_drops: int | None, acl: bool, target: str,
                 draft: str) -> dict:
    counted = _stats_delta(baseline, final, "rejected")
    stats = _stats_delta(baseline, final, "stats")
    expected = tally.expected()
    expected.update(spoof_seen)
    reasons = sorted(set(expected) | set(counted))
    rows = [{"reason": r, "attack_replies": tally.observed.get(r, 0), "silent": tally.counted_silently.get(r, 0),
             "spoofed": spoof_seen.get(r, 0), "expected": expected.get(r, 0), "verifier": counted.get(r, 0)}
            for r in reasons]
    sent = sum(tally.sent.values())
    exact_ok = all(r.failed == 0 and r.mismatched == 0 and r.after_attack_ok == 1 for r in records) and bool(records)
    checks = {
        "alive": alive,
        "rss_bounded": (not rss.get("measured")) or rss["growth_mb"] <= cfg.rss_growth_mb,
        "counted": final is not None and baseline is not None and counted == expected
        and counted.get("internal", 0) == 0,
        "errors_readable": tally.undecodable == 0 and tally.missing == 0 and not tally.violation_count,
        "exact": exact_ok,
    }
    return {
        "config": {"count": cfg.count, "sent": sent, "devices": cfg.devices, "seed": cfg.seed, "target": target,
                   "draft": draft, "broker": cfg.broker or f"self-started ({cfg.broker_mode})", "acl": acl,
                   "spoof": cfg.spoof, "kinds": sorted(kinds), "verifier_id": cfg.verifier_id,
                   "max_new_tokens": cfg.max_new_tokens, "gamma": cfg.gamma, "rss_growth_mb": cfg.rss_growth_mb},
        "checks": checks,
        "ok": all(checks.values()),
        "attack_seconds": attack_s,
        "payloads_per_s": sent / attack_s if attack_s else None,
        "rejections": rows,
        "rejected_total": {"expected": sum(expected.values()), "verifier": sum(counted.values())},
        "outcomes": {k: dict(v) for k, v in sorted(tally.outcomes.items())},
        "sent_by_kind": dict(sorted(tally.sent.items())),
        "scaffold": dict(tally.scaffold),
        "violations_by_kind": dict(tally.violation_count),
        "violations": tally.violations,
        "unsolicited_replies": tally.unsolicited,
        "undecodable_replies": tally.undecodable,
        "missing_replies": tally.missing,
        "verifier_stats_delta": dict(stats),
        "verifier_sessions_after": (final or {}).get("sessions"),
        "verifier_tracebacks": tracebacks,
        "verifier_incoming_dropped": queue_drops,
        "verifier_log_tail": verifier_log if not all(checks.values()) else [],
        "rss": rss,
        "devices": [r.__dict__ for r in records],
        "lost_sessions": sum(r.failed for r in records),
    }


def print_report(rep: dict) -> None:
    cfg = rep["config"]
    dev = rep["devices"]
    print(f"\nedgespec fuzz: {cfg['sent']} hostile payloads in {rep['attack_seconds']:.1f} s "
          f"({rep['payloads_per_s'] or 0:.0f}/s) against {cfg['verifier_id']} on {cfg['broker']}, while "
          f"{len(dev)} devices ran {sum(d['sessions'] for d in dev)} sessions")
    head = f"{'rejection reason':<22}{'replies':>9}{'silent':>8}{'spoofed':>9}{'expected':>10}{'verifier':>10}"
    print(head)
    print("-" * len(head))
    for r in rep["rejections"]:
        mark = "" if r["expected"] == r["verifier"] else "   <- differs"
        print(f"{r['reason']:<22}{r['attack_replies']:>9}{r['silent']:>8}{r['spoofed']:>9}{r['expected']:>10}"
              f"{r['verifier']:>10}{mark}")
    tot = rep["rejected_total"]
    print(f"{'total':<22}{'':>26}{tot['expected']:>10}{tot['verifier']:>10}")
    other: Counter[str] = Counter()
    for outcomes in rep["outcomes"].values():
        for k, v in outcomes.items():
            if k in NON_REJECTIONS:
                other[k] += v
    print("not rejections: " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())))
    print(f"\n{'attack kind':<24}{'sent':>7}  outcomes")
    for kind, n in rep["sent_by_kind"].items():
        outs = rep["outcomes"].get(kind, {})
        bad = rep["violations_by_kind"].get(kind, 0)
        text = ", ".join(f"{k} {v}" for k, v in sorted(outs.items(), key=lambda kv: -kv[1]))
        print(f"{kind:<24}{n:>7}  {text}" + (f"   [{bad} not as the contract says]" if bad else ""))
    rss = rep["rss"]
    if rss.get("measured"):
        print(f"\nverifier RSS: {rss['before_mb']:.1f} MB before, {rss['max_mb']:.1f} MB max, "
              f"{rss['after_mb']:.1f} MB after (growth {rss['growth_mb']:.1f} MB, bound {cfg['rss_growth_mb']:.0f})")
    for i, d in enumerate(dev):
        print(f"device {i}: {d['sessions']} sessions, {d['exact']} exact, {d['mismatched']} different, "
              f"{d['failed']} failed, {d['resyncs']} resyncs, "
              f"after the attack {'ok' if d['after_attack_ok'] else 'FAILED'}"
              + (f"  ({d['errors'][0]})" if d["errors"] else ""))
    for v in rep["violations"][:8]:
        print(f"  contract: {v.get('kind')} {v.get('note', '')}: expected {v.get('expected')}, got {v.get('got')}"
              f" {v.get('detail', '')[:100]}")
    print("\nchecks: " + "  ".join(f"{k} {'ok' if ok else 'FAILED'}" for k, ok in rep["checks"].items()))
