"""Prompt sets the tools generate from, and what the target alone makes of them.

`text` cases are plain prompts; `vision` cases are the camera's caption prompt with features
of held-out synthetic scenes, as a camera sends them; `chat` cases are held-out event
descriptions or general questions in a real model's chat template. Importing this module loads no model
library; the functions that need torch import it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

TEXT_PROMPTS = [
    "a red circle", "on the left a blue", "the camera sees", "a small green triangle",
    "near the top a yellow", "a white square moves", "two objects", "an orange circle stays",
]


@dataclass
class Case:
    prompt_ids: list[int]
    features: np.ndarray | None = None


def text_cases(lm, n: int) -> list[Case]:
    return [Case(lm.encode(p)) for p in TEXT_PROMPTS[:n]]


def chat_cases(lm, kind: str, n: int) -> list[Case]:
    """`n` held-out prompts of `kind` (edgespec.lm_prompts: "event" or "general") in the
    model's chat template, for a general language model."""
    from .lm_prompts import chat_ids, prompt_set

    return [Case(chat_ids(lm.tokenizer, p)) for p in prompt_set(kind, n, held_out=True)]


def has_chat_template(lm) -> bool:
    """A text-only model with a chat template: its workloads are chat prompts."""
    return lm.projector is None and bool(getattr(lm.tokenizer, "chat_template", None))


def vision_cases(lm, n: int, seed: int = 900_000) -> list[Case]:
    """Caption prompts with features of held-out synthetic scenes, as the camera sends them."""
    from camera_node.captions import CAPTION_PROMPT
    from camera_node.features import ObjectFeatures
    from camera_node.scene import random_scene
    from camera_node.session import wire_features
    from edgespec.defaultpair.data import scene_features

    extractor = ObjectFeatures()
    cases = []
    for i in range(n):
        _, feats = wire_features(scene_features(random_scene(seed + i), extractor))
        cases.append(Case(lm.encode(CAPTION_PROMPT), feats))
    return cases


def references(target, cases: list[Case], max_new: int) -> list[list[int]]:
    """The target's own greedy output for each case (KV-cached loop): what every speculative
    session must reproduce token for token."""
    from speculative.loop import generate_autoregressive
    from speculative.sampling import SamplingParams

    return [generate_autoregressive(target, c.prompt_ids, c.features, SamplingParams(), max_new).token_ids
            for c in cases]


class ForwardCounter:
    """Counts calls of a model's forward (HF generate gives no such figure itself)."""

    def __init__(self, model):
        self.model, self.calls, self._handle = model, 0, None

    def __enter__(self):
        def hook(*_):
            self.calls += 1

        self._handle = self.model.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()


def hf_generate(target, case: Case, n: int, assistant=None, gamma: int = 4) -> tuple[list[int], float, int]:
    """Greedy Hugging Face `generate()` of up to `n` tokens (assisted by `assistant` when
    given): (new token ids, seconds, target forwards)."""
    import torch

    ids = torch.tensor([case.prompt_ids])
    kwargs = {"do_sample": False, "max_new_tokens": n, "attention_mask": torch.ones_like(ids)}
    if case.features is not None:  # the vision prefix as input embeddings; returns new tokens only
        with torch.inference_mode():
            embeds = torch.cat([target.projector(torch.as_tensor(case.features)),
                                target.model.get_input_embeddings()(ids[0])])[None]
        kwargs.update(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long))
    if assistant is not None:
        cfg = assistant.generation_config
        cfg.num_assistant_tokens = gamma
        cfg.num_assistant_tokens_schedule = "constant"
        cfg.assistant_confidence_threshold = 0.0
        kwargs["assistant_model"] = assistant
    with ForwardCounter(target.model) as counter, torch.inference_mode():
        started = time.perf_counter()
        out = target.model.generate(**({} if case.features is not None else {"input_ids": ids}), **kwargs)
        seconds = time.perf_counter() - started
    new = out[0] if case.features is not None else out[0, len(case.prompt_ids):]
    return new.tolist(), seconds, counter.calls
