"""Vision prefix: project on-device features [S, D] to S prefix embeddings of a causal LM.

A model folder that takes vision features holds, beside the Hugging Face files,

* ``vision_projector.json`` — ``{"format_version": 1, "architecture": "slot_mlp",
  "feature_shape": [S, D], "hidden_size": H, "inner_size": I, "metadata": {...}}``;
* ``vision_projector.safetensors`` — the projector's weights (fp32).

At generation time the prefill's ``inputs_embeds`` is ``cat(projector(features) [S, H],
embed(prompt_ids) [P, H])``; every later token goes in as ``input_ids`` with the KV cache.

This module is part of the pure core: it imports only torch, safetensors and json.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PROJECTOR_CONFIG_NAME = "vision_projector.json"
PROJECTOR_WEIGHTS_NAME = "vision_projector.safetensors"
PROJECTOR_FORMAT_VERSION = 1
ARCHITECTURE = "slot_mlp"


class ProjectorError(ValueError):
    """A projector folder or a features array that does not fit the projector."""


class VisionProjector(torch.nn.Module):
    """features [.., S, D] -> prefix embeddings [.., S, H].

    A two-layer MLP applied to each slot, plus a learned embedding per slot index so the LM
    can tell slot 0 from slot 3 (the slots are ordered, e.g. left to right).
    """

    def __init__(
        self,
        feature_shape: tuple[int, int],
        hidden_size: int,
        inner_size: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        slots, dims = (int(v) for v in feature_shape)
        self.feature_shape = (slots, dims)
        self.hidden_size = int(hidden_size)
        self.inner_size = int(inner_size or 2 * hidden_size)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.fc_in = torch.nn.Linear(dims, self.inner_size)
        self.fc_out = torch.nn.Linear(self.inner_size, self.hidden_size)
        self.slot_embedding = torch.nn.Parameter(torch.zeros(slots, self.hidden_size))
        torch.nn.init.normal_(self.slot_embedding, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project [S, D] or [B, S, D] features to [S, H] or [B, S, H] embeddings."""
        if features.dim() not in (2, 3) or tuple(features.shape[-2:]) != self.feature_shape:
            raise ProjectorError(
                f"features of shape {tuple(features.shape)} do not fit a projector for "
                f"[S, D] = {list(self.feature_shape)} (or [B, S, D])"
            )
        x = features.to(self.fc_in.weight.dtype)
        hidden = torch.nn.functional.gelu(self.fc_in(x))  # [.., S, I]
        return self.fc_out(hidden) + self.slot_embedding  # [.., S, H]

    def config_dict(self) -> dict[str, Any]:
        """What ``vision_projector.json`` holds."""
        return {
            "format_version": PROJECTOR_FORMAT_VERSION,
            "architecture": ARCHITECTURE,
            "feature_shape": list(self.feature_shape),
            "hidden_size": self.hidden_size,
            "inner_size": self.inner_size,
            "metadata": self.metadata,
        }

    def save_pretrained(self, model_dir: str | os.PathLike[str]) -> None:
        """Write ``vision_projector.json`` and ``vision_projector.safetensors`` into model_dir."""
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, PROJECTOR_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.config_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        tensors = {
            k: v.detach().to(torch.float32).contiguous().cpu() for k, v in self.state_dict().items()
        }
        save_file(
            tensors, os.path.join(model_dir, PROJECTOR_WEIGHTS_NAME), metadata={"format": "pt"}
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike[str]) -> VisionProjector | None:
        """Load the projector of model_dir; None when the folder has no projector files.

        Raises :class:`ProjectorError` when only one of the two files is there, or they are
        of an unknown version or architecture, or the weights do not fit the config.
        """
        config_path = os.path.join(model_dir, PROJECTOR_CONFIG_NAME)
        weights_path = os.path.join(model_dir, PROJECTOR_WEIGHTS_NAME)
        has_config, has_weights = os.path.isfile(config_path), os.path.isfile(weights_path)
        if not has_config and not has_weights:
            return None
        if not (has_config and has_weights):
            missing = PROJECTOR_WEIGHTS_NAME if has_config else PROJECTOR_CONFIG_NAME
            raise ProjectorError(f"{model_dir}: has a vision projector but no {missing}")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        if (
            config.get("format_version") != PROJECTOR_FORMAT_VERSION
            or config.get("architecture") != ARCHITECTURE
        ):
            raise ProjectorError(
                f"{config_path}: format_version {config.get('format_version')!r} / architecture "
                f"{config.get('architecture')!r} not supported "
                f"(expected {PROJECTOR_FORMAT_VERSION} / {ARCHITECTURE!r})"
            )
        projector = cls(
            feature_shape=tuple(config["feature_shape"]),
            hidden_size=config["hidden_size"],
            inner_size=config.get("inner_size"),
            metadata=config.get("metadata"),
        )
        try:
            projector.load_state_dict(load_file(weights_path))
        except RuntimeError as exc:
            raise ProjectorError(
                f"{weights_path}: weights do not fit {config_path}: {exc}"
            ) from exc
        return projector.eval()
