"""What a camera sends as a caption session's prompt: vision features, or the event in words.

With the built-in pair the prompt is :data:`camera_node.captions.CAPTION_PROMPT` after the
event's vision features (the draft's projector turns them into a prefix). With a general
chat language model as the pair (a real model such as SmolLM2-135M-Instruct on the verifier
and its distilled draft on the camera: no projector, a chat template) the camera sends no
features: the facts it measured, worded by the caption grammar
(:func:`camera_node.captions.caption_for_facts`, e.g. ``a person in orange walks to the
left``), fill an instruction (``CameraConfig.text_prompt``; the commands give the one the
draft was distilled on, ``edgespec.lm_prompts.EVENT_INSTRUCTION``), and the instruction goes
as one user turn of the draft's chat template. The real model then writes the sentence; the
session is as exact as any other (greedy: the target's own output).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .captions import caption_for_facts

if TYPE_CHECKING:
    import numpy as np

    from speculative.models import LoadedLM

    from .node import CameraConfig

CAPTION_PLACEHOLDER = "{caption}"


def event_text(instruction: str, objects: Sequence[Mapping[str, Any]]) -> str:
    """`instruction` with ``{caption}`` replaced by the greedy caption of the event's objects
    (dicts of kind, colour, direction, entry, exit, stopped: what the device measured)."""
    if CAPTION_PLACEHOLDER not in instruction:
        raise ValueError(f"a text prompt must contain {CAPTION_PLACEHOLDER} (the event's facts): {instruction!r}")
    return instruction.replace(CAPTION_PLACEHOLDER, caption_for_facts(objects))


def chat_prompt_ids(tokenizer, user_text: str) -> list[int]:
    """Token ids of one user turn in the tokenizer's chat template, ready for the reply; the
    same ids as ``edgespec.lm_prompts.chat_ids`` (the draft was distilled on those), which a
    camera may not import (imports point down: pyproject.toml)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def request_inputs(lm: LoadedLM, cfg: CameraConfig, features: np.ndarray,
                   objects: Sequence[Mapping[str, Any]]) -> tuple[list[int], np.ndarray | None]:
    """(prompt ids, features) of one event's caption session. ``cfg.text_prompt`` None: the
    caption prompt after the (privacy-treated) features; else the event's facts in that
    instruction, in the draft's chat template, and no features."""
    if cfg.text_prompt is None:
        return lm.encode(cfg.privacy.prompt(cfg.prompt)), cfg.privacy.features(features)
    if not objects:
        raise ValueError("text prompts word the objects the device measured: they need the built-in "
                         "object features (no --vision-encoder)")
    return chat_prompt_ids(lm.tokenizer, cfg.privacy.prompt(event_text(cfg.text_prompt, objects))), None
