"""`edgespec bench-q`: the entries of q a drafted token sends, and the acceptance they buy.

Each drafted token carries its draft distribution q, truncated and quantized (speculative/
sampling.py `QRule`). Two rules are compared on the same sessions and seeds: a fixed cut of
`--q-top` entries, and the smallest support holding `--q-mass` of q (at most `--q-max`
entries). Verification is exact under both; what differs is the acceptance (a draft token
outside the sent support can never be drafted, so the target's mass there is rejected) and
the uplink bytes.

(a) self-draft on a flat target: a tiny random LM over 300 tokens, built here from a fixed
    seed, drafts for itself at temperature 1, top-k 50 (nearly uniform over 50 tokens);
(b) the default pair (edgespec/default_models) on the camera's caption workload (vision
    features of held-out synthetic scenes) at temperatures 0.7 and 1.0, no top-k.

Uplink bytes are the encoded plaintext DRAFT messages (msgpack, as `schemas.encode` writes
them; a sealed session adds a fixed overhead per message); rows of a block are padded to the
block's longest row, as the wire carries them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from .config import DEFAULTS, resolve_model_dir, set_threads

FLAT_VOCAB = 300
FLAT_TOP_K = 50
PAIR_TEMPERATURES = (0.7, 1.0)


def flat_lm(folder: Path, vocab: int = FLAT_VOCAB, seed: int = 0) -> Path:
    """A one-layer random Llama over `vocab` tokens with nearly flat logits (small weights),
    no end token, saved to `folder`; the same seed gives the same model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = specials + [f"w{i}" for i in range(vocab - len(specials))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>",
                                        pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=None, pad_token_id=0, initializer_range=0.02)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def measure(target, draft, cases, params, rule, gamma: int, tokens: int, seed: int) -> dict[str, Any]:
    """Speculative sessions in one process (as `speculative.loop.run_local`), counting the
    acceptance, the entries of q sent and the DRAFT bytes."""
    import numpy as np

    from schemas import DraftMsg, SparseQWire, encode
    from speculative.draft import Drafter
    from speculative.loop import EdgeGeneration, StopRule
    from speculative.target import TargetSession

    accepted = drafted = judged = generated = rounds = up = sent = nonzero = 0
    for i, case in enumerate(cases):
        drafter = Drafter(draft, params, seed=seed + i, q_rule=rule)
        drafter.start(case.prompt_ids, case.features)
        verifier = TargetSession(target, params, seed=seed + i)
        edge = EdgeGeneration(drafter, case.prompt_ids, gamma, StopRule(tokens, target.eos_token_ids))
        while not edge.done:
            block = edge.next_block()
            q = block.q
            wire = None if q is None else SparseQWire.from_arrays(q.ids.numpy(), q.weights.numpy())
            up += len(encode(DraftMsg(bytes(16), edge.result.rounds, edge.committed_len, block.tokens, wire)))
            if q is not None:
                sent += int(q.ids.numel())
                nonzero += int(np.count_nonzero(q.weights.numpy()))
            if edge.result.rounds:
                verdict = verifier.verify(block.tokens, q)
            else:
                verdict = verifier.open_and_verify(case.prompt_ids, case.features, block.tokens, q)
            edge.apply(verdict.n_accepted, verdict.next_token)
        r = edge.result
        accepted += sum(r.accepted_per_round)
        drafted += sum(r.drafted_per_round)
        judged += r.evaluated_positions
        generated += len(r.token_ids)
        rounds += r.rounds
    return {
        "sessions": len(cases), "generated": generated, "drafted": drafted, "rounds": rounds,
        "acceptance": round(accepted / drafted, 4) if drafted else 0.0,  # accepted / drafted
        "position_acceptance": round(accepted / judged, 4) if judged else 0.0,  # accepted / judged
        "tokens_per_round": round(generated / rounds, 3) if rounds else 0.0,
        "q_entries_per_drafted": round(nonzero / drafted, 2) if drafted else 0.0,
        "q_sent_per_drafted": round(sent / drafted, 2) if drafted else 0.0,  # with the block's padding
        "up_bytes_per_drafted": round(up / drafted, 1) if drafted else 0.0,
        "up_bytes_per_generated": round(up / generated, 1) if generated else 0.0,
    }


def rules(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from speculative.sampling import QRule

    return [(f"q_top {args.q_top}", QRule(top=args.q_top).validate()),
            (f"mass {args.q_mass} (max {args.q_max})", QRule(args.q_mass, args.q_max).validate())]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from speculative.models import load_lm
    from speculative.sampling import SamplingParams

    from .workloads import Case, text_cases, vision_cases

    rows: list[dict[str, Any]] = []

    def add(workload: str, target, draft, cases, params) -> None:
        for name, rule in rules(args):
            row = {"workload": workload, "temperature": params.temperature, "top_k": params.top_k, "q": name,
                   **measure(target, draft, cases, params, rule, args.gamma, args.tokens, args.seed)}
            rows.append(row)
            print_row(row)

    print_header()
    with tempfile.TemporaryDirectory() as tmp:
        flat = load_lm(flat_lm(Path(tmp) / "flat", seed=args.seed))
    prompts = [Case([1, 4 + (7 * i) % (FLAT_VOCAB - 4)]) for i in range(args.sessions)]
    add("flat self-draft", flat, flat, prompts, SamplingParams(1.0, FLAT_TOP_K).validate())
    target = load_lm(resolve_model_dir(args.target_model, "target"))
    draft = load_lm(resolve_model_dir(args.draft_model, "draft"))
    if target.projector is not None:
        cases = vision_cases(target, args.sessions)
    elif getattr(target.tokenizer, "chat_template", None):  # a chat model: held-out event descriptions
        from .lm_prompts import chat_ids, prompt_set

        cases = [Case(chat_ids(target.tokenizer, p)) for p in prompt_set("event", args.sessions, held_out=True)]
    else:
        cases = text_cases(target, args.sessions)
    label = "default pair" if args.target_model == "default" else f"{Path(str(args.target_model)).name} pair"
    for temperature in PAIR_TEMPERATURES:
        add(label, target, draft, cases, SamplingParams(temperature).validate())
    return rows


COLUMNS = (("workload", 16, "workload"), ("temperature", 5, "T"), ("top_k", 5, "top-k"), ("q", 22, "q"),
           ("acceptance", 7, "accept"), ("position_acceptance", 7, "a/pos"), ("tokens_per_round", 7, "tok/rd"),
           ("q_entries_per_drafted", 8, "entries"),
           ("q_sent_per_drafted", 6, "sent"), ("up_bytes_per_drafted", 8, "B/draft"),
           ("up_bytes_per_generated", 8, "B/token"))


def print_header() -> None:
    print("  ".join(f"{title:<{width}}" for _, width, title in COLUMNS), flush=True)


def print_row(row: dict[str, Any]) -> None:
    print("  ".join(f"{row[key]!s:<{width}}" for key, width, _ in COLUMNS), flush=True)


def cmd_bench_q(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    rows = run(args)
    if args.json:
        doc = {"command": "edgespec bench-q", "gamma": args.gamma, "max_new_tokens": args.tokens,
               "sessions": args.sessions, "seed": args.seed, "rows": rows}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench-q", help="acceptance and uplink bytes of fixed vs mass-sized q",
                       description="Acceptance and uplink bytes per token of a fixed q cut vs mass-sized q.")
    p.add_argument("--target-model", default="default")
    p.add_argument("--draft-model", default="default")
    p.add_argument("--q-mass", type=float, default=DEFAULTS.q_mass, help="the mass-sized rule (default %(default)s)")
    p.add_argument("--q-max", type=int, default=DEFAULTS.q_max, help="its most entries (default %(default)s)")
    p.add_argument("--q-top", type=int, default=16, help="the fixed cut compared with (default %(default)s)")
    p.add_argument("--gamma", type=int, default=DEFAULTS.gamma)
    p.add_argument("--tokens", type=int, default=DEFAULTS.max_new_tokens, help="tokens generated per session")
    p.add_argument("--sessions", type=int, default=16, help="sessions per row (prompts or scenes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    p.set_defaults(func=cmd_bench_q)
