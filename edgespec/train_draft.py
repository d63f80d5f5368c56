"""`edgespec train-draft`: distil a small draft for a target language model.

Self-distillation: the target answers a set of prompts (the camera's event descriptions and
general questions, in its chat template) greedily, and its own next-token distributions on
those answers are what the draft learns. The draft is the target cut down: the target's
embeddings and tied output layer (frozen), its final norm, and a few of its layers
(``--layers``, default the first two and the last), trained to match the target's top
entries (soft cross-entropy) and its greedy token (cross-entropy) at every answer position,
through the output head it drafts with (below): its softmax over the head's ids, the teacher's
entries outside them dropped. It shares the target's tokenizer, so a device can draft for that
target. The draft is a standard Hugging Face folder.

``--head-vocab K`` gives the draft a reduced output head: only the K ids the target's answers
(the teacher pass, before training) put the most mass on, the stop tokens always among them;
their rows are those of the frozen tied layer, so the draft's logits over them are the full
head's and it computes a K x hidden product instead of the whole vocabulary's. The folder
gains ``head_vocab.safetensors`` (the ids); `speculative.models.load_lm` reads it.
``--from-draft DIR`` cuts the head of a draft trained before: the teacher pass again (same
seed, same answers), no training.

Reproducible from ``--seed``: the same prompts, the same teacher data, the same batches.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from speculative.models import HEAD_VOCAB_FILE, LoadedLM, load_lm, write_head_vocab

from .lm_prompts import chat_ids, prompt_set
from .train_draft_recipe import DraftRecipe


@dataclass
class Example:
    ids: list[int]  # prompt + the target's greedy answer
    start: int  # first answer position
    top_ids: torch.Tensor = field(repr=False)  # [answer len, teacher_top]
    top_p: torch.Tensor = field(repr=False)  # teacher probabilities there (renormalised)


def teacher_examples(target: LoadedLM, prompts: list[str], recipe: DraftRecipe, pad: int,
                     progress: bool) -> list[Example]:
    """The target's greedy answers to ``prompts`` and its top entries at every answer position."""
    out: list[Example] = []
    bar = tqdm(total=len(prompts), desc="teacher", disable=not progress)
    tokenizer, eos = target.tokenizer, set(target.eos_token_ids)
    for k in range(0, len(prompts), recipe.teacher_batch):
        rows = [chat_ids(tokenizer, p) for p in prompts[k : k + recipe.teacher_batch]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            gen = target.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=recipe.max_new_tokens,
                                  do_sample=False, output_logits=True, return_dict_in_generate=True,
                                  pad_token_id=pad)
        logits = torch.stack(gen.logits, dim=1)  # [batch, new, vocab]
        for b, row in enumerate(rows):
            answer = gen.sequences[b, width:].tolist()
            n = next((i + 1 for i, t in enumerate(answer) if t in eos), len(answer))
            probs = torch.softmax(logits[b, :n].float(), dim=-1)
            top_p, top_ids = probs.topk(recipe.teacher_top, dim=-1)
            out.append(Example(row + answer[:n], len(row), top_ids, top_p / top_p.sum(-1, keepdim=True)))
        bar.update(len(rows))
    bar.close()
    return out


def make_draft(target, layers: tuple[int, ...]):
    """A model of the target's architecture with only ``layers``, copied from the target."""
    from transformers import AutoModelForCausalLM

    config = target.config.__class__.from_dict(target.config.to_dict())
    picked = [i % target.config.num_hidden_layers for i in layers]
    config.num_hidden_layers = len(picked)
    if getattr(config, "layer_types", None):
        config.layer_types = [target.config.layer_types[i] for i in picked]
    draft = AutoModelForCausalLM.from_config(config)
    draft.model.embed_tokens.load_state_dict(target.model.embed_tokens.state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    for mine, theirs in enumerate(picked):
        draft.model.layers[mine].load_state_dict(target.model.layers[theirs].state_dict())
    if not config.tie_word_embeddings:
        draft.lm_head.load_state_dict(target.lm_head.state_dict())
    draft.model.embed_tokens.weight.requires_grad_(False)
    draft.lm_head.weight.requires_grad_(False)
    return draft


class HeadRows:
    """The output rows the draft is trained through: its frozen tied layer's rows of the head
    ids (all of them for the full head), and each vocabulary id's row there (-1: none)."""

    def __init__(self, weight: torch.Tensor, ids: list[int] | None = None):
        vocab = weight.shape[0]
        kept = torch.arange(vocab) if ids is None else torch.tensor(sorted(ids), dtype=torch.int64)
        self.rows = weight.detach()[kept]
        self.index = torch.full((vocab,), -1, dtype=torch.int64)
        self.index[kept] = torch.arange(kept.numel())


def _loss(draft, batch: list[Example], recipe: DraftRecipe, pad: int, head: HeadRows | None = None) -> torch.Tensor:
    """Soft cross-entropy against the teacher's top entries plus ``hard_weight`` times the
    greedy token's, per answer position, through `head` (the drafter's own softmax over the
    head's ids; teacher entries outside it are dropped and the rest renormalised)."""
    if head is None:
        head = HeadRows(draft.get_output_embeddings().weight)
    width = max(len(e.ids) for e in batch)
    ids = torch.tensor([e.ids + [pad] * (width - len(e.ids)) for e in batch])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch])
    hidden = draft.model(input_ids=ids, attention_mask=mask).last_hidden_state
    picked = torch.cat([hidden[b, e.start - 1 : e.start - 1 + e.top_ids.shape[0]] for b, e in enumerate(batch)])
    logp = F.log_softmax((picked @ head.rows.t()).float(), dim=-1)  # row i predicts answer token i
    top_ids = torch.cat([e.top_ids for e in batch])
    top_p = torch.cat([e.top_p for e in batch])
    where = head.index[top_ids]  # [N, top]; -1 outside the head
    inside = where >= 0
    weight = top_p * inside
    weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)
    chosen = logp.gather(-1, where.clamp_min(0))
    soft = -(weight * chosen).sum()
    hard = -(chosen[:, 0] * inside[:, 0]).sum()  # the greedy token, where the head holds it
    return (soft + recipe.hard_weight * hard) / max(top_ids.shape[0], 1)


def train(draft, examples: list[Example], recipe: DraftRecipe, pad: int, progress: bool,
          head: HeadRows | None = None) -> list[float]:
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    rng = random.Random(recipe.seed)
    steps = recipe.epochs * math.ceil(len(examples) / recipe.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    losses: list[float] = []
    bar = tqdm(total=steps, desc="draft", disable=not progress)
    draft.train()
    for _ in range(recipe.epochs):
        order = examples[:]
        rng.shuffle(order)
        for k in range(0, len(order), recipe.batch):
            loss = _loss(draft, order[k : k + recipe.batch], recipe, pad, head)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    bar.close()
    draft.eval()
    return losses


def head_mass(examples: list[Example], vocab: int) -> torch.Tensor:
    """[vocab] float64: the teacher's probability mass on each id, summed over every answer
    position of the distillation text (its top entries there; the greedy token is the first)."""
    mass = torch.zeros(vocab, dtype=torch.float64)
    for e in examples:
        mass.index_add_(0, e.top_ids.flatten(), e.top_p.flatten().double())
    return mass


def head_vocab(mass: torch.Tensor, size: int, keep: tuple[int, ...] = ()) -> list[int]:
    """The `size` ids a reduced head keeps, ascending: `keep` (the stop tokens), then the ids
    by the teacher's mass on them, then (for ids it never put mass on) the lowest ids, which a
    BPE vocabulary gives its commoner pieces."""
    score = mass.clone()
    score[list(keep)] = float("inf")
    order = torch.sort(-score, stable=True).indices  # equal mass: the lower id first
    return sorted(order[: max(1, min(size, score.numel()))].tolist())


def _teacher(target_dir: Path, recipe: DraftRecipe, progress: bool) -> tuple[LoadedLM, list[Example], int]:
    target = load_lm(target_dir)
    prompts = (prompt_set("event", recipe.event_prompts, held_out=False, seed=recipe.seed)
               + prompt_set("general", recipe.general_prompts, held_out=False))
    tokenizer = target.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else target.eos_token_ids[0]
    return target, teacher_examples(target, prompts, recipe, pad, progress), pad


def _head_ids(target: LoadedLM, mass: torch.Tensor, size: int) -> list[int] | None:
    """The ids of a reduced head of `size` by the teacher's `mass` (None: the full head, for 0
    or the whole vocabulary)."""
    if not 0 < size < target.vocab_size:
        return None
    return head_vocab(mass, size, target.eos_token_ids)


def _write_head(out_dir: Path, target: LoadedLM, examples: list[Example], mass: torch.Tensor,
                ids: list[int] | None) -> dict:
    """Write the reduced head over `ids` (none for the full head); what it covers of the
    teacher's `mass` and of the greedy answer tokens."""
    (out_dir / HEAD_VOCAB_FILE).unlink(missing_ok=True)
    if ids is None:
        return {"head_vocab": target.vocab_size}
    write_head_vocab(out_dir, ids)
    inside = torch.zeros(target.vocab_size, dtype=torch.bool)
    inside[ids] = True
    greedy = torch.cat([e.top_ids[:, 0] for e in examples])
    return {"head_vocab": len(ids), "head_teacher_mass": round(float(mass[inside].sum() / mass.sum()), 5),
            "head_answer_tokens": round(float(inside[greedy].float().mean()), 5)}


def train_draft(target_dir: Path, out_dir: Path, recipe: DraftRecipe, progress: bool = True) -> dict:
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    started = time.perf_counter()
    target, examples, pad = _teacher(target_dir, recipe, progress)
    teacher_s = time.perf_counter() - started
    draft = make_draft(target.model, recipe.layers)
    mass = head_mass(examples, target.vocab_size)
    ids = _head_ids(target, mass, recipe.head_vocab)
    losses = train(draft, examples, recipe, pad, progress, HeadRows(draft.get_output_embeddings().weight, ids))
    out_dir.mkdir(parents=True, exist_ok=True)
    draft.save_pretrained(out_dir)
    target.tokenizer.save_pretrained(out_dir)
    report = {
        "target": str(target_dir), "recipe": asdict(recipe), "examples": len(examples),
        "answer_tokens": sum(e.top_ids.shape[0] for e in examples),
        "draft_parameters": sum(p.numel() for p in draft.parameters()),
        **_write_head(out_dir, target, examples, mass, ids),
        "teacher_seconds": round(teacher_s, 1), "seconds": round(time.perf_counter() - started, 1),
        "first_loss": round(sum(losses[:10]) / max(1, len(losses[:10])), 4),
        "last_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
    }
    (out_dir / "edgespec-draft.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def cut_head(target_dir: Path, draft_dir: Path, out_dir: Path, recipe: DraftRecipe, progress: bool = True) -> dict:
    """A trained draft with the reduced head `recipe.head_vocab` (0: the full one again), in
    `out_dir` (may be `draft_dir`): the teacher pass of `recipe` ranks the ids, nothing is trained.
    The draft's layers are unchanged and its head rows are its tied output layer's, so this is
    the draft `train_draft` makes with the same recipe."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    started = time.perf_counter()
    if not (draft_dir / "config.json").is_file():
        raise ValueError(f"--from-draft {draft_dir}: not a model folder")
    target, examples, _ = _teacher(target_dir, recipe, progress)
    if out_dir.resolve() != draft_dir.resolve():
        shutil.copytree(draft_dir, out_dir, dirs_exist_ok=True)
    meta_path = out_dir / "edgespec-draft.json"
    report = json.loads(meta_path.read_text()) if meta_path.is_file() else {"target": str(target_dir)}
    mass = head_mass(examples, target.vocab_size)
    report.update(_write_head(out_dir, target, examples, mass, _head_ids(target, mass, recipe.head_vocab)))
    report["head_from"] = {"draft": str(draft_dir), "recipe": asdict(recipe),
                           "seconds": round(time.perf_counter() - started, 1)}
    meta_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
