"""Loading Hugging Face causal LMs from local folders and running them with a KV cache.

`CachedLM` is the one place that talks to a model's forward: prefill (optional vision prefix
embeddings, then prompt tokens), extend by new tokens, crop back after a rejection. Lengths
are counted in cache positions; the vision prefix occupies the first `prefix_len` of them.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cpu_linear
from .vision_prefix import VisionProjector


class ModelLoadError(RuntimeError):
    """A model folder is missing, incomplete or not a causal LM."""


def tokenizer_fingerprint(tokenizer: Any) -> bytes:
    """16-byte digest of a tokenizer's vocabulary and special tokens.

    Two models can share drafts only when their tokenizers map the same strings to the same
    ids; the session open carries this digest and the verifier compares it with its own.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    specials = {
        name: getattr(tokenizer, name, None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    }
    blob = json.dumps({"vocab": vocab, "special": specials}, ensure_ascii=False).encode()
    return hashlib.sha256(blob).digest()[:16]


@dataclass
class LoadedLM:
    """A causal LM, its tokenizer and (optionally) its vision projector, ready for inference."""

    model: Any
    tokenizer: Any
    projector: VisionProjector | None
    path: Path
    fingerprint: bytes
    vocab_size: int  # token ids the model knows: rows of its full output layer (may exceed len(tokenizer))
    max_positions: int
    eos_token_ids: tuple[int, ...]
    cache_kwarg: str  # "cache" (transformers >= 5) or "past_key_values"
    logits_to_keep: bool = False  # the forward can skip all but the last positions' logits
    # A reduced output head (a draft's `head_vocab.safetensors`): the token id of each of its
    # rows, ascending; None when the head covers all `vocab_size` ids.
    head_ids: torch.Tensor | None = None

    @property
    def head_size(self) -> int:
        """Rows of the output head the forward computes: K for a reduced head, else `vocab_size`."""
        return self.vocab_size if self.head_ids is None else int(self.head_ids.numel())

    def head_token_ids(self, rows: torch.Tensor) -> torch.Tensor:
        """Token ids of head rows (the same ids when the head is full)."""
        return rows if self.head_ids is None else self.head_ids[rows]

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if not ids:
            bos = self.tokenizer.bos_token_id
            ids = [bos] if bos is not None else []
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def resolve_device(device: str) -> str:
    """`auto`: CUDA when present, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}: use float32, float16 or bfloat16")
    return value


def kv_dims(model_config: Any) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a Hugging Face decoder config (a multimodal config's
    decoder part): what one cached position holds per K and per V."""
    cfg = model_config.get_text_config(decoder=True) if hasattr(model_config, "get_text_config") else model_config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return int(cfg.num_hidden_layers), kv_heads, head_dim


def load_lm(model_dir: str | Path, *, dtype: torch.dtype | str = torch.float32, device: str = "cpu",
            device_map: str | None = None) -> LoadedLM:
    """Load a causal LM folder (config, weights, tokenizer, optional vision projector).

    `device` is `cpu`, `cuda`, `cuda:N` or `auto`; `device_map="auto"` spreads a model larger
    than one accelerator over several (needs the `accelerate` package).
    """
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if device_map is not None:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map).eval()
            device = str(next(model.parameters()).device)
        else:
            # transformers types PreTrainedModel.to through a wrapper that drops its arguments' types
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ModelLoadError(f"{path}: cannot load a causal LM and tokenizer: {exc}") from exc
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    head_ids = _reduce_head(model, path)
    cpu_linear.speed_up(model)
    projector = VisionProjector.from_pretrained(path)
    if projector is not None:
        projector = projector.to(device=device, dtype=dtype).eval()
    params = inspect.signature(model.forward).parameters
    cfg = model.config
    return LoadedLM(
        model=model,
        tokenizer=tokenizer,
        projector=projector,
        path=path,
        fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=vocab_size,
        max_positions=int(getattr(cfg, "max_position_embeddings", 1 << 20)),
        eos_token_ids=_eos_ids(model, tokenizer),
        cache_kwarg="cache" if "cache" in params else "past_key_values",
        logits_to_keep="logits_to_keep" in params,
        head_ids=head_ids,
    )


# A draft folder may carry a reduced output head: the ids (int64 [K], ascending) whose logits
# the draft computes, and optionally their own rows ("weight", [K, H]; without it the rows are
# those of the folder's full output layer, tied embeddings included). The folder stays a
# standard one (from_pretrained gives the full head); load_lm uses only these rows: the model's
# forward gives -inf for the other ids, and the drafter draws from the K logits and maps them to
# ids (q is then 0 outside the head, which exact verification handles like any truncation).
HEAD_VOCAB_FILE = "head_vocab.safetensors"


def write_head_vocab(model_dir: str | Path, ids: torch.Tensor | list[int], weight: torch.Tensor | None = None) -> Path:
    """Give the model in `model_dir` a reduced output head over `ids` (sorted, deduplicated here)."""
    from safetensors.torch import save_file

    kept = torch.unique(torch.as_tensor(ids, dtype=torch.int64))  # sorted ascending
    tensors = {"ids": kept.contiguous()}
    if weight is not None:
        order = torch.as_tensor(ids, dtype=torch.int64).argsort()
        if kept.numel() != order.numel():
            raise ValueError("head ids with their own rows must be distinct")
        tensors["weight"] = weight[order].contiguous()
    out = Path(model_dir) / HEAD_VOCAB_FILE
    save_file(tensors, str(out))
    return out


def read_head_vocab(model_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(ids [K], rows [K, H] or None) of a folder's reduced head; None when it has none."""
    path = Path(model_dir) / HEAD_VOCAB_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        ids = tensors["ids"].to(torch.int64)
    except (OSError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a head vocabulary file: {exc}") from exc
    return ids, tensors.get("weight")


def _reduce_head(model: Any, path: Path) -> torch.Tensor | None:
    """Swap the model's output layer for the reduced head its folder declares (untied: the
    input embeddings stay whole); returns the head's ids, or None when there is none."""
    found = read_head_vocab(path)
    if found is None:
        return None
    ids, rows = found
    full = model.get_output_embeddings()
    vocab, hidden = full.weight.shape
    if ids.ndim != 1 or not ids.numel() or bool((ids[1:] <= ids[:-1]).any()) or int(ids[0]) < 0 \
            or int(ids[-1]) >= vocab:
        raise ModelLoadError(f"{path}: {HEAD_VOCAB_FILE}: ids must be distinct, ascending and below {vocab}")
    if rows is not None and tuple(rows.shape) != (ids.numel(), hidden):
        raise ModelLoadError(f"{path}: {HEAD_VOCAB_FILE}: weight must be [{ids.numel()}, {hidden}]")
    if getattr(full, "bias", None) is not None:
        raise ModelLoadError(f"{path}: a reduced head needs an output layer without bias")
    weight = (full.weight.detach()[ids.to(full.weight.device)] if rows is None else rows).clone()
    head = torch.nn.Linear(hidden, ids.numel(), bias=False, device=full.weight.device, dtype=full.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
    # The model's own forward (and so generate(), assisted generation) gives logits over every
    # id, -inf outside the head; the drafter's lean forward multiplies by the K rows itself.
    head.register_forward_hook(functools.partial(_spread_hook, ids.to(full.weight.device), vocab))
    model.set_output_embeddings(head.eval())
    model.config.tie_word_embeddings = False  # nothing may re-tie the head to the embeddings
    return ids.cpu()


def spread_logits(rows: torch.Tensor, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """A reduced head's logits [..., K] as [..., vocab]: -inf for the ids it leaves out."""
    full = rows.new_full((*rows.shape[:-1], vocab), float("-inf"))
    full[..., ids] = rows
    return full


def _spread_hook(ids: torch.Tensor, vocab: int, module: Any, inputs: Any, rows: torch.Tensor) -> torch.Tensor:
    return spread_logits(rows, ids, vocab)


# An empty cache per model, copied for each new one: building a DynamicCache from the config
# reads the layer types anew every time (about 0.1 ms, paid by every session open).
_EMPTY_CACHES: weakref.WeakKeyDictionary[Any, tuple[Any, torch.device]] = weakref.WeakKeyDictionary()


def _new_cache(model: Any) -> tuple[Any, torch.device]:
    """(a new empty DynamicCache for `model`, the device of its parameters)."""
    empty = _EMPTY_CACHES.get(model)
    if empty is None:
        from transformers import DynamicCache

        empty = _EMPTY_CACHES[model] = (DynamicCache(config=model.config), next(model.parameters()).device)
    return copy.deepcopy(empty[0]), empty[1]


@dataclass
class CachedLM:
    """One sequence's KV cache over a `LoadedLM`.

    Call `prefill` once, then `extend` with new tokens; `crop` discards rejected positions.
    Every call is one model forward; `forwards` counts them.
    """

    lm: LoadedLM
    cache: Any = None
    prefix_len: int = 0
    forwards: int = 0
    # True: logits over all ids (a reduced head's are -inf outside it); False: [n, head_size],
    # the head's rows, which `lm.head_token_ids` maps to ids (the drafter reads them so).
    full_vocab: bool = True
    _device: torch.device = field(default=torch.device("cpu"), init=False)

    def __post_init__(self) -> None:
        self.cache, self._device = _new_cache(self.lm.model)

    @property
    def length(self) -> int:
        """Cache positions held (vision prefix included)."""
        return int(self.cache.get_seq_length())

    def _forward(self, *, logits: bool = True, last: int = 0, **inputs: Any) -> torch.Tensor | None:
        """One forward into the cache; its logits [n, V] (float32, on the CPU, where sampling
        and verification run: [n, V] is small; see `full_vocab` for a reduced head), only the
        `last` positions' when `last` > 0, or None when only the cache is wanted."""
        inputs[self.lm.cache_kwarg] = self.cache
        keep = last if logits else 1  # the output head over the positions wanted, not n
        if keep and self.lm.logits_to_keep:
            inputs["logits_to_keep"] = keep
        out = self.lm.model(use_cache=True, **inputs)
        self.forwards += 1
        if not logits:
            return None
        rows = out.logits[0]
        rows = (rows[-last:] if last else rows).float().cpu()
        ids = self.lm.head_ids
        if ids is None or rows.shape[-1] == (self.lm.vocab_size if self.full_vocab else ids.numel()):
            return rows
        # a head module without load_lm's hook (e.g. swapped for a quantized one) gives K logits
        return spread_logits(rows, ids, self.lm.vocab_size) if self.full_vocab else rows[:, ids]

    @torch.inference_mode()
    def prefill(self, token_ids: list[int], features: np.ndarray | None = None, *,
                logits: bool = True, last: int = 0) -> torch.Tensor | None:
        """Feed the vision prefix (if any) and `token_ids`; returns logits [n, V] (the `last`
        positions' when `last` > 0), or None when there is nothing to feed or `logits` is False."""
        if features is None:
            if not token_ids:
                return None
            return self._forward(input_ids=torch.tensor([token_ids], device=self._device), logits=logits, last=last)
        return self._forward(inputs_embeds=self.prefill_embeddings(token_ids, features)[None], logits=logits,
                             last=last)

    @torch.inference_mode()
    def prefill_embeddings(self, token_ids: list[int], features: np.ndarray | None) -> torch.Tensor:
        """The input embeddings [n, H] a prefill feeds (vision prefix first); sets `prefix_len`."""
        embeds = []
        if features is not None:
            if self.lm.projector is None:
                raise ModelLoadError(f"{self.lm.path}: features given but the model has no vision projector")
            feats = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self._device)
            prefix = self.lm.projector(feats.to(self.lm.model.dtype))  # [S, H]
            self.prefix_len = int(prefix.shape[0])
            embeds.append(prefix)
        if token_ids:
            ids = torch.tensor(token_ids, device=self._device)
            embeds.append(self.lm.model.get_input_embeddings()(ids))
        return torch.cat(embeds, 0)  # callers ask only when there is something to feed

    @torch.inference_mode()
    def extend(self, token_ids: list[int]) -> torch.Tensor:
        """Feed `token_ids` after what is cached; returns their logits [n, V] (float32)."""
        out = self._forward(input_ids=torch.tensor([token_ids], device=self._device))
        assert out is not None  # logits were asked for
        return out

    def crop(self, length: int) -> None:
        """Keep the first `length` cache positions."""
        excess = self.length - length
        if excess > 0:
            self.cache.crop(-excess)
