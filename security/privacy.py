"""Privacy on the edge: prompt redaction and Gaussian noise on vision features.

Both run on the device, before anything is published.

`PromptSanitizer` replaces e-mail addresses, phone numbers and configured names with
placeholders. It is a heuristic (regular expressions, no model): it errs towards redacting
digit groups that look like phone numbers, and leaves dates, times, IPv4 addresses, decimals
and short numbers alone.

`add_feature_noise` is the Gaussian mechanism on the feature array: clip, then add
N(0, sigma^2) to every coordinate. Neighbouring inputs are any two feature arrays of the same
shape (any two scenes). After clipping the whole array to L2 norm C, two such arrays differ by
at most 2C in L2 norm, so the L2 sensitivity is 2C; with per-row clipping of n rows to C each
it is 2C*sqrt(n). The release of one noised array is then (epsilon, delta)-differentially
private with respect to the scene (Dwork & Roth 2014, Theorem A.1, for the classic bound;
Balle & Wang 2018 for the analytic one). Repeated releases of the same scene compose: the
guarantee is per release. Floating-point sampling is not hardened against the attacks of
Mironov 2012; treat the figure as a design parameter, not a certified bound.
"""

from __future__ import annotations

import math
import re
import secrets
from collections import Counter
from collections.abc import Iterable

import numpy as np

EMAIL_PLACEHOLDER = "[email]"
PHONE_PLACEHOLDER = "[phone]"
NAME_PLACEHOLDER = "[name]"
PHONE_MIN_DIGITS = 7  # shortest national subscriber numbers with an area code
PHONE_MAX_DIGITS = 15  # E.164 maximum
MAX_ANALYTIC_EPSILON = 100.0  # beyond this exp(epsilon) overflows long before it means anything

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])")
# A candidate is a run of digits with single spaces, dots, hyphens, slashes or parentheses
# between them, optionally led by '+' or '('. One character class under one star: linear time.
_PHONE_RUN = re.compile(r"(?<![\w+.-])(?:\+|\()?\d[\d \t().\-/]*\d(?![\w])")
_GROUP_SPLIT = re.compile(r"[ \t().\-/]+")
_LIST_SEPARATOR = re.compile(r"([ \t]+/[ \t]+|[ \t]{2,})")
PHONE_MIN_DIGITS_UNGROUPED = 10  # a bare digit string must be a full national number
_ISO_DATE = re.compile(r"(?<!\d)\d{4}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?!\d)")
_NOT_PHONE = [
    re.compile(r"\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"),  # day-month-year date
    re.compile(r"\d{1,3}(?:\.\d{1,3}){3}"),  # IPv4 address
    re.compile(r"\d+\.\d+"),  # decimal number
    re.compile(r"\d{1,3}(?:[.,]\d{3})+"),  # thousands separators
]


def _looks_like_phone(candidate: str) -> bool:
    digits = sum(ch.isdigit() for ch in candidate)
    if not PHONE_MIN_DIGITS <= digits <= PHONE_MAX_DIGITS:
        return False
    if candidate.isdigit() and digits < PHONE_MIN_DIGITS_UNGROUPED:
        return False  # "1234567" is more likely a count than a phone number
    if _ISO_DATE.search(candidate) or any(p.fullmatch(candidate) for p in _NOT_PHONE):
        return False
    if re.search(r"[ \t().\-/]{3,}", candidate):
        return False  # separators pile up: a list or a formula, not a number
    groups = [g for g in _GROUP_SPLIT.split(candidate.lstrip("+")) if g]
    return sum(len(g) == 1 for g in groups) <= 1  # "+1 555..." yes, "1 2 3 4 5 6 7" no


class PromptSanitizer:
    """Replace e-mail addresses, phone numbers and listed names in a prompt with placeholders.

    `names` are matched case-insensitively as whole words (a name inside a longer word is left
    alone); a multi-word name matches with any whitespace between its words. Longer names win
    over their prefixes ("Anna Maria" before "Anna").
    """

    def __init__(self, names: Iterable[str] = (), *, emails: bool = True, phones: bool = True,
                 email_placeholder: str = EMAIL_PLACEHOLDER,
                 phone_placeholder: str = PHONE_PLACEHOLDER,
                 name_placeholder: str = NAME_PLACEHOLDER) -> None:
        self.emails = emails
        self.phones = phones
        self.email_placeholder = email_placeholder
        self.phone_placeholder = phone_placeholder
        self.name_placeholder = name_placeholder
        cleaned = sorted({" ".join(n.split()) for n in names if n and n.strip()},
                         key=lambda n: (-len(n), n))
        self.names: tuple[str, ...] = tuple(cleaned)
        if cleaned:
            alternatives = "|".join(r"\s+".join(re.escape(w) for w in n.split()) for n in cleaned)
            self._names_re: re.Pattern[str] | None = re.compile(
                rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        else:
            self._names_re = None

    def sanitize_counted(self, text: str) -> tuple[str, Counter[str]]:
        """The redacted text and how many of each kind ("email", "phone", "name") were found."""
        counts: Counter[str] = Counter()
        if self.emails:
            text, n = _EMAIL.subn(self.email_placeholder, text)
            counts["email"] += n
        if self.phones:
            def phone(match: re.Match[str]) -> str:
                # A run may hold several numbers ("a / b", "a   b"): try the pieces when the
                # whole run is not one number.
                run = match.group(0)
                pieces = [run] if _looks_like_phone(run) else _LIST_SEPARATOR.split(run)
                out = []
                for piece in pieces:
                    if piece and not _LIST_SEPARATOR.fullmatch(piece) and _looks_like_phone(piece):
                        counts["phone"] += 1
                        piece = self.phone_placeholder
                    out.append(piece)
                return "".join(out)
            text = _PHONE_RUN.sub(phone, text)
        if self._names_re is not None:
            text, n = self._names_re.subn(self.name_placeholder, text)
            counts["name"] += n
        return text, +counts

    def sanitize(self, text: str) -> str:
        """`text` with e-mail addresses, phone numbers and listed names replaced."""
        return self.sanitize_counted(text)[0]

    __call__ = sanitize


# ---------------------------------------------------------------- Gaussian mechanism


def _check_privacy_params(epsilon: float, delta: float, l2_sensitivity: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if not (math.isfinite(l2_sensitivity) and l2_sensitivity > 0):
        raise ValueError(f"l2_sensitivity must be positive and finite, got {l2_sensitivity!r}")


def gaussian_noise_sigma(epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """Classic Gaussian mechanism: sigma = sqrt(2 ln(1.25/delta)) * sensitivity / epsilon.

    Gives (epsilon, delta)-DP only for 0 < epsilon < 1 (Dwork & Roth 2014, Theorem A.1);
    a larger epsilon raises ValueError: use `analytic_gaussian_sigma`.
    """
    _check_privacy_params(epsilon, delta, l2_sensitivity)
    if epsilon >= 1:
        raise ValueError(f"the classic Gaussian bound holds only for epsilon < 1, got {epsilon}; "
                         "use analytic_gaussian_sigma (mechanism='analytic')")
    return math.sqrt(2.0 * math.log(1.25 / delta)) * l2_sensitivity / epsilon


def _std_normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(sigma: float, epsilon: float, l2_sensitivity: float) -> float:
    """The exact delta of the Gaussian mechanism with this sigma at this epsilon.

    delta = Phi(D/(2s) - e*s/D) - exp(e) * Phi(-D/(2s) - e*s/D)   (Balle & Wang 2018, Thm. 8)
    """
    a = l2_sensitivity / (2.0 * sigma)
    b = epsilon * sigma / l2_sensitivity
    second = _std_normal_cdf(-a - b)
    tail = math.exp(epsilon) * second if second > 0.0 else 0.0
    return max(0.0, _std_normal_cdf(a - b) - tail)


def analytic_gaussian_sigma(epsilon: float, delta: float, l2_sensitivity: float, *,
                            rel_tol: float = 1e-9) -> float:
    """Smallest sigma giving (epsilon, delta)-DP for any epsilon > 0 (analytic Gaussian mechanism).

    Found by bisection on `gaussian_delta`, which decreases as sigma grows; the result is
    rounded up, so the stated (epsilon, delta) holds.
    """
    _check_privacy_params(epsilon, delta, l2_sensitivity)
    if epsilon > MAX_ANALYTIC_EPSILON:
        raise ValueError(f"epsilon {epsilon} > {MAX_ANALYTIC_EPSILON} protects nothing; "
                         "turn feature noise off instead")
    lo, hi = 0.0, l2_sensitivity
    while gaussian_delta(hi, epsilon, l2_sensitivity) > delta:
        lo, hi = hi, hi * 2.0
    while hi - lo > rel_tol * hi:
        mid = 0.5 * (lo + hi)
        if gaussian_delta(mid, epsilon, l2_sensitivity) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def clip_l2(features: np.ndarray, clip_norm: float, *, per_row: bool = False) -> np.ndarray:
    """A copy of `features` scaled so its L2 norm (or each last-axis row's) is <= clip_norm."""
    x = np.array(features, dtype=np.float64, copy=True)
    if per_row:
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        scale = np.minimum(1.0, clip_norm / np.maximum(norms, np.finfo(np.float64).tiny))
        return x * scale
    norm = float(np.linalg.norm(x))
    return x * (clip_norm / norm) if norm > clip_norm else x


def feature_noise_sigma(shape: tuple[int, ...], epsilon: float, delta: float, clip_norm: float,
                        *, per_row: bool = False, mechanism: str = "analytic") -> float:
    """The per-coordinate sigma `add_feature_noise` uses for an array of `shape`."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be positive and finite, got {clip_norm!r}")
    rows = int(np.prod(shape[:-1])) if per_row and len(shape) > 1 else 1
    sensitivity = 2.0 * clip_norm * math.sqrt(rows)
    if mechanism == "classic":
        return gaussian_noise_sigma(epsilon, delta, sensitivity)
    if mechanism == "analytic":
        return analytic_gaussian_sigma(epsilon, delta, sensitivity)
    raise ValueError(f"unknown mechanism {mechanism!r}: use 'analytic' or 'classic'")


def add_feature_noise(features: np.ndarray, epsilon: float, delta: float, clip_norm: float,
                      rng: np.random.Generator | None = None, *, per_row: bool = False,
                      mechanism: str = "analytic") -> np.ndarray:
    """Clip `features` to L2 norm `clip_norm` and add Gaussian noise for (epsilon, delta)-DP.

    Returns a new array of the input's floating dtype (float32 stays float32); the input is not
    changed. `per_row=True` clips each last-axis vector instead of the whole array, which keeps
    more signal per row but raises the sensitivity by sqrt(rows) (the guarantee still covers the
    whole array). `rng=None` seeds a generator from the OS's random source.
    """
    x = np.asarray(features)
    if x.size == 0 or not np.issubdtype(x.dtype, np.number):
        raise ValueError("features must be a non-empty numeric array")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinity; refuse rather than leak through "
                         "the clipping")
    sigma = feature_noise_sigma(x.shape, epsilon, delta, clip_norm, per_row=per_row,
                                mechanism=mechanism)
    if rng is None:
        rng = np.random.default_rng(secrets.randbits(128))
    noised = clip_l2(x, clip_norm, per_row=per_row) + rng.normal(0.0, sigma, size=x.shape)
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return noised.astype(out_dtype, copy=False)
