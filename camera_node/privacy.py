"""Privacy measures applied on the device, before anything leaves it.

- Prompt sanitising: e-mail addresses, phone numbers and names from a configured list are
  replaced by placeholders (security/privacy.py: PromptSanitizer).
- Vision feature noise: the features are clipped to an L2 norm and Gaussian noise is added so
  that the released features are (epsilon, delta)-differentially private with respect to the
  whole feature array of an event (security/privacy.py: add_feature_noise, analytic Gaussian
  mechanism; sensitivity 2 * clip).

Both are off unless asked for by flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from security.privacy import PromptSanitizer, add_feature_noise, feature_noise_sigma


@dataclass(frozen=True)
class PrivacyConfig:
    sanitize_prompt: bool = False
    names: tuple[str, ...] = ()
    feature_epsilon: float | None = None  # None: features sent as computed
    feature_delta: float = 1e-5
    feature_clip: float = 4.0

    def prompt(self, text: str) -> str:
        if not self.sanitize_prompt:
            return text
        return PromptSanitizer(self.names).sanitize(text)

    def features(self, features: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        if self.feature_epsilon is None:
            return features
        return add_feature_noise(features, self.feature_epsilon, self.feature_delta, self.feature_clip, rng)

    def describe(self, feature_shape: tuple[int, ...] | None = None) -> str:
        parts = []
        if self.sanitize_prompt:
            parts.append(f"prompts sanitised (e-mail, phone, {len(self.names)} names)")
        if self.feature_epsilon is not None:
            text = (f"features ({self.feature_epsilon:g}, {self.feature_delta:g})-DP, "
                    f"clip {self.feature_clip:g}")
            if feature_shape is not None:
                sigma = feature_noise_sigma(feature_shape, self.feature_epsilon, self.feature_delta,
                                            self.feature_clip)
                text += f", sigma {sigma:.3f}"
            parts.append(text)
        return "; ".join(parts) or "off"


def parse_names(value: str | None) -> tuple[str, ...]:
    """`a,b,c` or `@FILE` (one name per line)."""
    if not value:
        return ()
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as handle:
            return tuple(line.strip() for line in handle if line.strip())
    return tuple(n.strip() for n in value.split(",") if n.strip())
