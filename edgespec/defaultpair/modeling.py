"""Model helpers of the default pair: build, run with a vision prefix, save and load.

Sequence layout, the same in training and at run time::

    position:  0 .. S-1          S .. S+P-1        S+P ..
    input:     projector(feat)   embed(prompt)     embed(caption tokens) ...
    predicts:  (unused)          caption[0] at the last prompt position, then the next token

The prefill goes in as ``inputs_embeds``; later tokens as ``input_ids`` with the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from edgespec.defaultpair.config import LMSpec
from speculative.vision_prefix import VisionProjector

SHARD_SIZE = "4MB"  # weight files stay small in the repository (from_pretrained reads the shards)


def build_lm(
    spec: LMSpec, tokenizer: PreTrainedTokenizerBase, max_positions: int
) -> LlamaForCausalLM:
    """A freshly initialised Llama causal LM of shape ``spec`` over the tokenizer's vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,  # the vocabulary is tiny; one matrix serves both ends
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def build_projector(
    feature_shape: tuple[int, int], spec: LMSpec, metadata: dict[str, Any] | None = None
) -> VisionProjector:
    """A fresh projector from features [S, D] to the LM's hidden size."""
    return VisionProjector(feature_shape, spec.hidden_size, spec.projector_inner, metadata=metadata)


def parameter_count(*modules: torch.nn.Module) -> int:
    """Distinct parameters of the modules (tied weights counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for p in module.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def token_logits(
    model: LlamaForCausalLM, projector: VisionProjector, features: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Teacher-forced logits [B, T, V]: row j is the distribution of token j+1.

    features [B, S, D], ids [B, T] (prompt + caption + eos, right-padded). Right padding
    needs no attention mask: causal attention never lets a real token see a later pad.
    """
    prefix = projector(features)  # [B, S, H]
    embeds = torch.cat([prefix, model.get_input_embeddings()(ids)], dim=1)  # [B, S+T, H]
    logits = model(inputs_embeds=embeds, use_cache=False).logits  # [B, S+T, V]
    return logits[:, prefix.shape[1] :]


@torch.no_grad()
def greedy_captions(
    model: LlamaForCausalLM,
    projector: VisionProjector,
    features: torch.Tensor,
    prompt: list[int],
    eos_id: int,
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy caption token ids (eos excluded) for a batch of features [B, S, D].

    All rows share the prefix length, so the batch needs no padding: one prefill with
    ``inputs_embeds``, then one cached forward per new token.
    """
    batch = features.shape[0]
    prompt_ids = torch.tensor(prompt, dtype=torch.long).expand(batch, -1)  # [B, P]
    embeds = torch.cat([projector(features), model.get_input_embeddings()(prompt_ids)], dim=1)
    out = model(inputs_embeds=embeds, use_cache=True)
    cache = out.cache
    tokens = out.logits[:, -1].argmax(-1)  # [B]
    done = torch.zeros(batch, dtype=torch.bool)
    captions: list[list[int]] = [[] for _ in range(batch)]
    for _ in range(max_new_tokens):
        done |= tokens == eos_id
        for i in (~done).nonzero().flatten().tolist():
            captions[i].append(int(tokens[i]))
        if bool(done.all()):
            break
        out = model(input_ids=tokens[:, None], cache=cache, use_cache=True)
        cache = out.cache
        tokens = out.logits[:, -1].argmax(-1)
    return captions


def save_model_folder(
    out_dir: str | Path,
    model: LlamaForCausalLM,
    projector: VisionProjector,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
) -> None:
    """Write a Hugging Face causal LM folder plus tokenizer and vision projector files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens,
        do_sample=False,
    )
    model.save_pretrained(out_dir, max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(out_dir)
    projector.save_pretrained(out_dir)


@dataclass
class ModelFolder:
    """A loaded model folder: LM, tokenizer and (optional) vision projector."""

    model: LlamaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    projector: VisionProjector | None


def load_model_folder(model_dir: str | Path) -> ModelFolder:
    """Load a folder written by :func:`save_model_folder` (fp32, eval mode, CPU)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return ModelFolder(model, tokenizer, VisionProjector.from_pretrained(model_dir))
