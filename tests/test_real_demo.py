"""The real-LM camera (`edgespec demo --pair smollm2-135m`): one synthetic camera event, worded
into the chat prompt the draft was distilled on, drafted by the real model's distilled draft
and verified by SmolLM2-135M-Instruct in a verifier process through a real Mosquitto. The
caption must be the target's own greedy output for that prompt, token for token.

Skipped when the model or its draft is not in the models cache (`make models`, `make draft`).
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import dev_keys, reference, start_verifier, stop_process
from edgespec import model_registry as reg

NAME = "smollm2-135m"
# The real models cache, read at import (collection), before conftest points EDGESPEC_HOME at a
# temporary home for the run.
REAL_DIR = reg.model_dir(NAME)
DRAFT_DIR = reg.pair_draft_dir(NAME, REAL_DIR.parent)
pytestmark = pytest.mark.skipif(
    not reg.is_fetched(NAME, REAL_DIR.parent) or not (DRAFT_DIR / "config.json").is_file(),
    reason=f"{NAME} or its draft is missing ({REAL_DIR}, {DRAFT_DIR}): `make models` and `make draft` make them")

PREFIX = "realdemo/v1"
DEVICE = "cam-real"
NEW_TOKENS = 32


@pytest.mark.broker
def test_camera_event_caption_is_the_targets_greedy_output(mosquitto):
    import torch

    from camera_node.event_prompt import event_text
    from camera_node.node import CameraConfig, CameraRun, run_camera
    from edgespec.lm_prompts import EVENT_INSTRUCTION, chat_ids
    from speculative.models import load_lm

    torch.set_num_threads(1)
    verifier = start_verifier(mosquitto.url, REAL_DIR, "verifier-realdemo", "--prefix", PREFIX, "--threads", "1")
    try:
        draft = load_lm(DRAFT_DIR)
        cfg = CameraConfig(device_id=DEVICE, source="synthetic:1", broker=mosquitto.url, prefix=PREFIX,
                           keys=dev_keys(DEVICE, mosquitto.url), text_prompt=EVENT_INSTRUCTION, max_events=1,
                           max_new_tokens=NEW_TOKENS, seed=0, timeout_s=60)
        [caption] = asyncio.run(run_camera(cfg, draft, run=CameraRun()))
    finally:
        stop_process(verifier)
    assert caption.objects and caption.session is not None
    assert caption.session.feature_bytes == 0  # words only: no features went up
    target = load_lm(REAL_DIR)
    prompt_ids = chat_ids(target.tokenizer, event_text(EVENT_INSTRUCTION, caption.objects))
    expected = reference(target, prompt_ids, NEW_TOKENS)
    assert caption.session.result.token_ids == expected, caption.text
    assert caption.text == target.decode(expected)
    assert len(expected) >= 8  # a sentence, not an immediate stop
    print(f"\n{event_text('{caption}', caption.objects)!r} -> {caption.text!r} "
          f"(acceptance {caption.acceptance_rate:.2f}, {caption.rounds} rounds)")
