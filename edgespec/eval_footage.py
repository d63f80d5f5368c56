"""The default pair on real footage: labelled clips through the camera pipeline.

For each clip named in a labels file (JSON, see ``defaultpair/footage_labels.json``):

1. every frame through the camera's motion detector (an event still open at the end of the
   clip is flushed, as the camera does);
2. per event, the device's object features, rounded to fp16 as they go on the wire (an event
   in which no moving object was followed is counted and, as on the camera, not captioned);
3. the caption by speculative decoding at T = 0 (the draft proposes ``gamma`` tokens a
   round, the target verifies), checked token for token against the target's own greedy
   caption;
4. each clause of the caption scored against the clip's labelled objects: kind (right, or
   honestly "object"), colour, direction, and whether it claims "stays still" for an object
   the label says crossed the frame.

A label lists, per object that moves, the acceptable words for each attribute (a person who
walks away from an elevated camera also moves up the frame, so both are right).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from camera_node.capture import open_source
from camera_node.captions import CAPTION_PROMPT, parse_caption
from camera_node.events import detect_events
from camera_node.features import ObjectFeatures, encode_facts
from camera_node.session import wire_features
from edgespec.config import DEFAULTS
from edgespec.defaultpair.config import CAPTION_MAX_NEW_TOKENS

LABELS_FILE = Path(__file__).resolve().parent / "defaultpair" / "footage_labels.json"
"""Labels of the project's reference clips (CC BY 4.0 sample videos, see the file)."""


class LabelsError(ValueError):
    """A labels file is missing, not JSON, or not in the documented shape."""


@dataclass(frozen=True)
class FootageConfig:
    gamma: int = DEFAULTS.gamma
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS
    max_events_per_clip: int = 12


def load_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{clip file name: {"motion": bool, "objects": [{kind, colour, direction: [words]}]}}``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LabelsError(f"cannot read labels {path}: {exc}") from None
    clips = data.get("clips") if isinstance(data, dict) else None
    if not isinstance(clips, dict) or not clips:
        raise LabelsError(f"{path}: expected {{\"clips\": {{name: label}}}}")
    for name, label in clips.items():
        objects = label.get("objects", []) if isinstance(label, dict) else None
        if not isinstance(objects, list) or not all(
            isinstance(o, dict) and all(isinstance(o.get(k), list) for k in ("kind", "colour", "direction"))
            for o in objects
        ):
            raise LabelsError(f"{path}: clip {name!r}: objects need kind, colour and direction lists")
    return clips


def _best_object(mention: Any, objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The labelled object a clause agrees with most."""
    def agreement(obj: dict[str, Any]) -> int:
        return sum(getattr(mention, k) in obj[k] for k in ("kind", "colour", "direction"))

    return max(objects, key=agreement) if objects else None


def score_clauses(caption: str, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per clause of ``caption``: what it says and whether each attribute is right."""
    rows = []
    for m in parse_caption(caption):
        obj = _best_object(m, objects)
        if obj is None:
            rows.append({"kind": m.kind, "colour": m.colour, "direction": m.direction, "labelled": False})
            continue
        kind_right = m.kind in obj["kind"]
        rows.append({
            "kind": m.kind, "colour": m.colour, "direction": m.direction, "labelled": True,
            "kind_right": kind_right,
            "kind_right_or_unsure": kind_right or m.kind == "object",
            "colour_right": m.colour in obj["colour"],
            "direction_right": m.direction in obj["direction"],
            "false_still": m.direction == "still" and bool(obj.get("crossed", False)),
        })
    return rows


def _keyframe(event: Any, out_dir: Path, stem: str) -> str:
    """Save the event's middle sample as a JPEG (for the docs); return its file name."""
    clip = event.clip()
    frame = clip[len(clip) // 2].image
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{stem}.jpg"
    cv2.imwrite(str(out_dir / name), cv2.resize(frame, (320, round(frame.shape[0] * 320 / frame.shape[1]))),
                [cv2.IMWRITE_JPEG_QUALITY, 80])
    return name


def evaluate_footage(footage_dir: str | Path, labels: dict[str, dict[str, Any]], target: Any, draft: Any,
                     cfg: FootageConfig = FootageConfig(), keyframes: Path | None = None) -> dict[str, Any]:
    """Run every labelled clip found in ``footage_dir``; the JSON-ready report."""
    from speculative.loop import generate_autoregressive, run_local
    from speculative.sampling import SamplingParams

    footage_dir = Path(footage_dir)
    extractor = ObjectFeatures()
    prompt = target.encode(CAPTION_PROMPT)
    greedy = SamplingParams()
    clips: list[dict[str, Any]] = []
    for name, label in labels.items():
        path = footage_dir / name
        if not path.is_file():
            clips.append({"clip": name, "missing": True})
            continue
        with open_source(str(path)) as source:
            events = detect_events(source)
            frames = source.frames_read
        entry: dict[str, Any] = {"clip": name, "frames": frames, "events": len(events),
                                 "motion_labelled": bool(label.get("motion", True)), "captions": [],
                                 "events_without_objects": 0}
        for k, event in enumerate(events[: cfg.max_events_per_clip]):
            facts = extractor.facts(event)
            if not facts:  # the camera does not caption an event with no moving object
                entry["events_without_objects"] += 1
                continue
            _, feats = wire_features(encode_facts(facts, extractor.slots))
            result = run_local(target, draft, prompt, feats, greedy, cfg.gamma, cfg.max_new_tokens)
            reference = generate_autoregressive(target, prompt, feats, greedy, cfg.max_new_tokens)
            text = target.decode(result.token_ids)
            caption = {
                "start_t": round(event.start_t, 2), "end_t": round(event.end_t, 2),
                "text": text,
                "clauses": score_clauses(text, label.get("objects", [])),
                "acceptance_rate": result.acceptance_rate,
                "accepted": sum(result.accepted_per_round),
                "drafted": sum(result.drafted_per_round),
                "rounds": result.rounds,
                "tokens": len(result.token_ids),
                "identical_to_target_greedy": result.token_ids == reference.token_ids,
            }
            if keyframes is not None:
                caption["keyframe"] = _keyframe(event, keyframes, f"{Path(name).stem}-{k + 1}")
            entry["captions"].append(caption)
        clips.append(entry)
    return {"clips": clips, "summary": summarise(clips), "config": cfg.__dict__}


def summarise(clips: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures the issue's thresholds are about, over all clips."""
    captions = [c for clip in clips for c in clip.get("captions", [])]
    clauses = [r for c in captions for r in c["clauses"] if r["labelled"]]
    moving = [c for c in clips if c.get("motion_labelled") and not c.get("missing")]

    def share(key: str) -> float | None:
        return sum(r[key] for r in clauses) / len(clauses) if clauses else None

    drafted = sum(c["drafted"] for c in captions)
    rounds = sum(c["rounds"] for c in captions)
    return {
        "clips": len([c for c in clips if not c.get("missing")]),
        "clips_missing": [c["clip"] for c in clips if c.get("missing")],
        "clips_with_motion_captioned": sum(1 for c in moving if c["captions"]),
        "clips_with_motion": len(moving),
        "captions": len(captions),
        "clauses": len(clauses),
        "kind": share("kind_right"),
        "kind_or_unsure": share("kind_right_or_unsure"),
        "colour": share("colour_right"),
        "direction": share("direction_right"),
        "false_still_claims": sum(r["false_still"] for r in clauses),
        "acceptance_rate": sum(c["accepted"] for c in captions) / drafted if drafted else None,
        "tokens_per_round": sum(c["tokens"] for c in captions) / rounds if rounds else None,
        "identical_to_target_greedy": all(c["identical_to_target_greedy"] for c in captions),
    }


def format_footage(report: dict[str, Any]) -> str:
    """The footage part of the eval table."""
    s = report["summary"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = ["real footage (camera pipeline, speculative at T=0):",
             f"{'clip':<30}{'frames':>7}{'events':>7}  caption"]
    for clip in report["clips"]:
        if clip.get("missing"):
            lines.append(f"{clip['clip']:<30}{'missing':>7}")
            continue
        texts = [c["text"] for c in clip["captions"]] or ["(no caption)"]
        lines.append(f"{clip['clip']:<30}{clip['frames']:>7}{clip['events']:>7}  {texts[0]}")
        lines += [f"{'':<44}  {t}" for t in texts[1:4]]
    lines += [
        "",
        (f"clips with motion captioned {s['clips_with_motion_captioned']}/{s['clips_with_motion']}, "
         f"{s['captions']} captions, {s['clauses']} clauses"),
        (f"kind {pct(s['kind'])} (or honestly 'object' {pct(s['kind_or_unsure'])})  colour {pct(s['colour'])}  "
         f"direction {pct(s['direction'])}  false 'stays still' {s['false_still_claims']}"),
        (f"acceptance {pct(s['acceptance_rate'])}  tokens/round {pct(s['tokens_per_round'])}  "
         f"= target greedy: {s['identical_to_target_greedy']}"),
    ]
    if s["clips_missing"]:
        lines.append(f"missing clips: {', '.join(s['clips_missing'])}")
    return "\n".join(lines)


def footage_markdown(report: dict[str, Any], keyframes: str | None, command: str) -> str:
    """A page of the captions per clip, each beside its event's key frame (if saved)."""
    s = report["summary"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "# Captions on real footage",
        "",
        "What the camera pipeline says about the sample clips (Sample videos by Intel IoT DevKit,",
        "CC BY 4.0), with the built-in pair, speculative decoding at T = 0 (each caption is the",
        "target's own greedy caption, token for token). Made by:",
        "",
        "```sh",
        command,
        "```",
        "",
        (f"Clips with motion captioned: {s['clips_with_motion_captioned']} of {s['clips_with_motion']}; "
         f"{s['captions']} captions with {s['clauses']} clauses, each scored against the clip's labels "
         "(`edgespec/defaultpair/footage_labels.json`)."),
        "",
        "| per clause | kind | kind, or honestly \"object\" | colour | direction | false \"stays still\" |",
        "|---|---|---|---|---|---|",
        (f"| share right | {pct(s['kind'])} | {pct(s['kind_or_unsure'])} | {pct(s['colour'])} | "
         f"{pct(s['direction'])} | {s['false_still_claims']} |"),
        "",
        (f"Acceptance of the draft's tokens {pct(s['acceptance_rate'])}, {pct(s['tokens_per_round'])} tokens "
         "per round (gamma 4)."),
        "",
    ]
    for clip in report["clips"]:
        if clip.get("missing"):
            continue
        events, skipped = clip["events"], clip.get("events_without_objects", 0)
        lines += [f"## {clip['clip']}", "",
                  f"{clip['frames']} frames, {events} motion event{'s' if events != 1 else ''}, "
                  f"{len(clip['captions'])} captioned"
                  + (f" ({skipped} with no moving object followed)." if skipped else "."), ""]
        if not clip["captions"]:
            lines += ["No caption.", ""]
            continue
        lines += ["| key frame | time | caption | right (kind / colour / direction) |", "|---|---|---|---|"]
        for cap in clip["captions"]:
            image = f"![]({keyframes}/{cap['keyframe']})" if keyframes and cap.get("keyframe") else ""
            marks = "; ".join(
                "/".join("yes" if r.get(k) else "no" for k in ("kind_right_or_unsure", "colour_right",
                                                              "direction_right"))
                for r in cap["clauses"] if r["labelled"]
            )
            lines.append(f"| {image} | {cap['start_t']:.1f}-{cap['end_t']:.1f} s | {cap['text']} | {marks} |")
        lines.append("")
    return "\n".join(lines)


__all__ = ["LABELS_FILE", "FootageConfig", "LabelsError", "evaluate_footage", "format_footage",
           "footage_markdown", "load_labels", "score_clauses", "summarise"]
