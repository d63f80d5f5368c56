"""Settings shared by the commands: defaults, environment variables, model name resolution.

Flags win over environment variables (EDGESPEC_BROKER, EDGESPEC_PREFIX, EDGESPEC_THREADS,
EDGESPEC_TIMEOUT), which win over an optional settings file (edgespec/settings_file.py), which
wins over these defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from schemas.topics import PROTOCOL
from verifier_node.settings import DEFAULTS as VERIFIER

from .model_registry import REGISTRY, fetched_dir

REPO = Path(__file__).resolve().parent.parent  # the checkout: where spawned nodes run
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent / "default_models"


@dataclass(frozen=True)
class Defaults:
    """The one default of each setting that several commands take (a flag's default is read
    from here, never written twice)."""

    broker: str = os.environ.get("EDGESPEC_BROKER", "mqtt://127.0.0.1:1883")
    prefix: str = os.environ.get("EDGESPEC_PREFIX", PROTOCOL)
    threads: int = int(os.environ.get("EDGESPEC_THREADS", "1"))
    timeout_s: float = float(os.environ.get("EDGESPEC_TIMEOUT", "10"))
    # A generation: generate, camera, bench, loadtest (--tokens), serving (--tokens).
    max_new_tokens: int = 48
    gamma: int = 4  # draft tokens per round
    # Entries of q sent per drafted token: the smallest support holding q_mass of the draft's
    # distribution, at most q_max entries; q_top N instead cuts q at a fixed N entries.
    # (speculative.sampling.QRule's defaults; written here too, as this module imports no torch)
    q_mass: float = 0.995
    q_max: int = 64
    q_top: int | None = None
    poll_ms: float = 20.0  # a device polls the socket this long after sending a block
    # The verifier (and the verifiers loadtest starts): its own defaults (verifier_node/settings.py).
    max_batch: int = VERIFIER.max_batch
    batch_window_ms: float = VERIFIER.batch_window_s * 1000
    busy_poll_ms: float = VERIFIER.busy_poll_s * 1000


DEFAULTS = Defaults()


class ModelNotFound(FileNotFoundError):
    """A --target-model/--draft-model that names no model folder."""


def resolve_model_dir(name: str | os.PathLike, role: str) -> Path:
    """`default` selects the committed default pair; a known model's name (REGISTRY, e.g.
    `smollm2-135m`) its folder in the models cache (`edgespec models fetch NAME` makes it);
    anything else is a local folder."""
    if str(name) in REGISTRY:
        return fetched_dir(str(name))
    if str(name) == "default":
        path = DEFAULT_MODELS_DIR / role
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"the default {role} model is missing at {path}: run `edgespec train-default`")
        return path
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{path} is not a Hugging Face model folder (no config.json)")
    return path


def set_threads(threads: int) -> None:
    """Torch intra-op threads for this process. Tiny models run fastest on one thread, and the
    nodes of a local demo then do not compete for the same cores."""
    import torch

    torch.set_num_threads(max(1, threads))
