"""A camera's event in words as a chat model's prompt (camera_node/event_prompt.py), how the
`edgespec camera` and `edgespec demo` commands choose it, and the built-in pair's prompt and
features left as they were. No model is loaded."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest

from camera_node.captions import CAPTION_PROMPT
from camera_node.event_prompt import chat_prompt_ids, event_text, request_inputs
from camera_node.node import CameraConfig
from camera_node.privacy import PrivacyConfig
from edgespec.lm_prompts import EVENT_INSTRUCTION, chat_ids
from tiny_models import make_tokenizer

TEMPLATE = "<s> {% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}" \
           "{% if add_generation_prompt %}assistant{% endif %}"
PERSON = {"kind": "person", "colour": "orange", "direction": "left", "entry": "inside", "exit": "inside",
          "stopped": False}
VAN = {"kind": "vehicle", "colour": "white", "direction": "right", "entry": "left", "exit": "right", "stopped": True}


def chat_tokenizer():
    tok = make_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


class FakeLM:
    """What request_inputs reads of a loaded model: its tokenizer, encode and projector."""

    def __init__(self, tokenizer, projector=None):
        self.tokenizer, self.projector = tokenizer, projector

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_event_text_words_the_measured_facts_into_the_distilled_instruction():
    assert event_text(EVENT_INSTRUCTION, [PERSON]) == (
        "A security camera reports: a person in orange walks to the left. "
        "Write one short sentence for the operator's log.")
    assert event_text("Describe: {caption}", [PERSON, VAN]) == (
        "Describe: a person in orange walks to the left while a white vehicle drives from the left to the "
        "right and stops")
    with pytest.raises(ValueError, match="caption"):
        event_text("Describe this event.", [PERSON])


def test_chat_prompt_ids_are_the_ids_the_draft_was_distilled_on():
    tok = chat_tokenizer()
    text = event_text(EVENT_INSTRUCTION, [PERSON])
    ids = chat_prompt_ids(tok, text)
    assert ids == chat_ids(tok, text)
    assert ids[0] == tok.convert_tokens_to_ids("<s>") and ids[-1] == tok.convert_tokens_to_ids("assistant")


def test_text_prompt_mode_sends_the_chat_prompt_and_no_features():
    tok = chat_tokenizer()
    lm = FakeLM(tok)
    cfg = CameraConfig(device_id="cam-1", text_prompt=EVENT_INSTRUCTION)
    features = np.ones((4, 8), dtype=np.float32)
    ids, sent = request_inputs(lm, cfg, features, [PERSON])
    assert sent is None
    assert ids == chat_ids(tok, event_text(EVENT_INSTRUCTION, [PERSON]))
    with pytest.raises(ValueError, match="vision-encoder"):  # no measured objects to word
        request_inputs(lm, cfg, features, [])


def test_default_mode_is_the_caption_prompt_after_the_features():
    lm = FakeLM(make_tokenizer(["describe", ":"]))
    features = np.arange(32, dtype=np.float32).reshape(4, 8)
    ids, sent = request_inputs(lm, CameraConfig(device_id="cam-1"), features, [PERSON])
    assert CameraConfig(device_id="cam-1").text_prompt is None
    assert ids == lm.encode(CAPTION_PROMPT) and sent is features
    noisy = CameraConfig(device_id="cam-1", privacy=PrivacyConfig(feature_epsilon=1.0))
    _, sent = request_inputs(lm, noisy, features, [PERSON])
    assert sent is not None and sent.shape == features.shape and not np.array_equal(sent, features)


def camera_args(*argv: str) -> argparse.Namespace:
    from edgespec.cli import build_parser

    return build_parser(["camera"]).parse_args(["camera", *argv])


def test_camera_flags_choose_the_text_prompt():
    from edgespec.camera_command import _camera_text_prompt

    chat, vision = FakeLM(chat_tokenizer()), FakeLM(make_tokenizer(), projector=object())
    chat.path = vision.path = "model"
    assert _camera_text_prompt(camera_args(), chat) == EVENT_INSTRUCTION  # auto: a chat draft
    assert _camera_text_prompt(camera_args(), vision) is None  # auto: the built-in pair as before
    assert _camera_text_prompt(camera_args(), FakeLM(make_tokenizer())) is None  # no chat template
    assert _camera_text_prompt(camera_args("--no-text-prompt"), chat) is None
    with pytest.raises(ValueError, match="chat template"):
        _camera_text_prompt(camera_args("--text-prompt"), vision)
    with pytest.raises(ValueError, match="vision-encoder"):
        _camera_text_prompt(camera_args("--vision-encoder", "enc"), chat)


def test_camera_pair_names_the_draft_and_says_what_to_run(tmp_path, monkeypatch):
    from edgespec.camera_command import _camera_draft_dir
    from edgespec.model_registry import ModelNotFetched

    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    with pytest.raises(ModelNotFetched, match="make draft"):
        _camera_draft_dir(camera_args("--pair", "smollm2-135m"))
    draft = tmp_path / "models" / "smollm2-135m-draft"
    draft.mkdir(parents=True)
    (draft / "config.json").write_text("{}")
    assert _camera_draft_dir(camera_args("--pair", "smollm2-135m")) == draft


def test_demo_pair_missing_is_one_line_saying_what_to_run(tmp_path, monkeypatch, capsys):
    from edgespec.cli import main

    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--pair", "smollm2-135m"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run `make models` and `make draft`" in err, err


def test_demo_cameras_send_text_prompts_with_a_real_model():
    from edgespec import demo

    args = SimpleNamespace(pair=None, target_model="default", draft_model="default")
    assert demo.demo_models(args).camera_args() == ["--draft-model", "default"]
    real = demo.DemoModels("/m/smollm2-135m", "/m/smollm2-135m-draft", "smollm2-135m")
    assert real.camera_args() == ["--draft-model", "/m/smollm2-135m-draft", "--text-prompt"]
