"""The draft distillation's parts on a tiny random Llama: the cut-down copy and its loss."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from edgespec.lm_prompts import GENERAL_PROMPTS, prompt_set
from edgespec.train_draft import Example, HeadRows, _loss, make_draft, train
from edgespec.train_draft_recipe import DraftRecipe


def _tiny_target() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def test_the_draft_is_the_targets_layers_and_frozen_embeddings() -> None:
    target = _tiny_target()
    draft = make_draft(target, (0, 1, -1))
    assert draft.config.num_hidden_layers == 3
    pairs = [(0, 0), (1, 1), (2, 4)]
    for mine, theirs in pairs:
        for (name, p), (_, q) in zip(draft.model.layers[mine].named_parameters(),
                                     target.model.layers[theirs].named_parameters(), strict=True):
            assert torch.equal(p, q), name
    assert torch.equal(draft.model.embed_tokens.weight, target.model.embed_tokens.weight)
    assert not draft.model.embed_tokens.weight.requires_grad and not draft.lm_head.weight.requires_grad
    assert draft.lm_head.weight.data_ptr() == draft.model.embed_tokens.weight.data_ptr()  # tied


def test_training_lowers_the_loss_and_moves_only_the_layers() -> None:
    target = _tiny_target()
    ids = [5, 9, 3, 7, 11, 2, 8]
    with torch.no_grad():
        probs = torch.softmax(target(input_ids=torch.tensor([ids])).logits[0, 2:-1], -1)
    top_p, top_ids = probs.topk(8, -1)
    example = Example(ids, 3, top_ids, top_p / top_p.sum(-1, keepdim=True))
    recipe = DraftRecipe(epochs=8, batch=2, lr=1e-2)
    draft = make_draft(target, (0, -1))
    embeddings = draft.model.embed_tokens.weight.clone()
    before = _loss(draft, [example], recipe, pad=0).item()
    losses = train(draft, [example, example], recipe, pad=0, progress=False)
    assert len(losses) == 8 and _loss(draft, [example], recipe, pad=0).item() < before
    assert torch.equal(draft.model.embed_tokens.weight, embeddings)


def test_the_loss_through_a_reduced_head_is_the_drafters_softmax_over_it() -> None:
    target = _tiny_target()
    draft = make_draft(target, (0, -1))
    ids = [5, 9, 3, 7, 11, 2]
    top_ids = torch.tensor([[7, 40, 11], [11, 7, 50]])  # 40 and 50 are outside the head
    top_p = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    example = Example(ids, 4, top_ids, top_p)
    head_ids = [2, 7, 11, 20]
    recipe = DraftRecipe(hard_weight=0.5)
    got = _loss(draft, [example], recipe, pad=0, head=HeadRows(draft.get_output_embeddings().weight, head_ids))
    with torch.no_grad():
        logits = draft(input_ids=torch.tensor([ids])).logits[0, 3:5][:, head_ids]
    logp = torch.log_softmax(logits, -1)
    at = {t: i for i, t in enumerate(head_ids)}
    soft = -(0.5 * logp[0, at[7]] + 0.2 * logp[0, at[11]]) / 0.7 - (0.6 * logp[1, at[11]] + 0.3 * logp[1, at[7]]) / 0.9
    hard = -(logp[0, at[7]] + logp[1, at[11]])
    torch.testing.assert_close(got.detach(), (soft + 0.5 * hard) / 2, rtol=1e-5, atol=1e-5)
    full = _loss(draft, [example], recipe, pad=0)  # the whole vocabulary: every teacher entry counts
    assert not torch.isclose(full, got)


def test_held_out_prompts_never_overlap_training_ones() -> None:
    assert not set(prompt_set("general", 50, held_out=False)) & set(prompt_set("general", 50, held_out=True))
    assert set(prompt_set("general", 50, held_out=False)) | set(prompt_set("general", 50, held_out=True)) == set(
        GENERAL_PROMPTS)
    train = prompt_set("event", 5, held_out=False)
    assert len(set(train)) == 5 and not set(train) & set(prompt_set("event", 5, held_out=True))
    assert all(p.startswith("A security camera reports: a") for p in train)


class _Tokenizer:
    def __init__(self, template: str | None) -> None:
        self.chat_template = template

    def apply_chat_template(self, turns, tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return f"<user>{turns[0]['content']}<assistant>"

    def __call__(self, text: str, add_special_tokens: bool) -> dict:
        return {"input_ids": [ord(c) for c in text]}


class _LM:
    def __init__(self, template: str | None) -> None:
        self.tokenizer = _Tokenizer(template)

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


def test_a_chat_model_gets_its_prompt_as_a_user_turn() -> None:
    from edgespec.lm_prompts import prompt_ids_for

    assert prompt_ids_for(_LM(None), "hi") == [ord("h"), ord("i")]
    assert prompt_ids_for(_LM("t"), "hi") == [ord(c) for c in "<user>hi<assistant>"]
    assert prompt_ids_for(_LM("t"), "hi", raw=True) == [ord("h"), ord("i")]
