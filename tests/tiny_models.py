"""Tiny Hugging Face model pairs made from configs, saved and reloaded like real ones."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (  # noqa: SIM905 (a sentence of words reads better than a list of strings)
    "a the red green blue yellow circle square triangle moves left right up down stays still "
    "near top bottom centre of frame and is on in small large object scene camera sees one two "
    "three hello world what where which there here it this that"
).split()


def make_tokenizer(words: tuple[str, ...] | list[str] = tuple(WORDS)):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def make_lm(out: Path, *, hidden: int, layers: int, seed: int, tokenizer=None, eos: bool = True) -> Path:
    """A random Llama-style causal LM with the shared test tokenizer, saved to `out`."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or make_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id if eos else None,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # peaked logits: argmax ties are practically impossible
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_pair(root: Path, *, eos: bool = True) -> tuple[Path, Path]:
    """(target_dir, draft_dir): a 2-layer 64-wide target and a 1-layer 32-wide draft."""
    target = make_lm(root / "target", hidden=64, layers=2, seed=1, eos=eos)
    draft = make_lm(root / "draft", hidden=32, layers=1, seed=2, eos=eos)
    return target, draft
