"""Prompt sanitizer and Gaussian feature noise (security/privacy.py)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.privacy import (PromptSanitizer, add_feature_noise, analytic_gaussian_sigma,
                              clip_l2, feature_noise_sigma, gaussian_delta, gaussian_noise_sigma)


@pytest.fixture(scope="module")
def sanitizer() -> PromptSanitizer:
    return PromptSanitizer(["Anna", "Anna Maria", "Bob", "O'Brien"])


@pytest.mark.parametrize("text, expected", [
    ("mail anna.smith+cam@example.co.uk now", "mail [email] now"),
    ("ops@edge-1.example.com, x@y.io", "[email], [email]"),
    ("call +44 20 7946 0958.", "call [phone]."),
    ("US (555) 123-4567 or 555-123-4567 or 555.123.4567", "US [phone] or [phone] or [phone]"),
    ("+1-800-555-0199 / 0044 20 7946 0958", "[phone] / [phone]"),
    ("DE 0170 1234567, FR +33 1 23 45 67 89", "DE [phone], FR [phone]"),
    ("bare 5551234567 number", "bare [phone] number"),
    ("Anna Maria met ANNA and bob", "[name] met [name] and [name]"),
    ("Ask O'Brien.", "Ask [name]."),
    ("Anna   Maria waved", "[name] waved"),
])
def test_redacts(sanitizer: PromptSanitizer, text: str, expected: str) -> None:
    assert sanitizer.sanitize(text) == expected


@pytest.mark.parametrize("text", [
    "Bobby and Annabel are not on the list",
    "at 2024-01-15 10:30 on 15/01/2024",
    "host 192.168.1.10 port 8883",
    "pi is 3.14159265, there are 1,234,567 cars and 1.234.567 bikes",
    "count 1 2 3 4 5 6 7 8 9 people, frame 1234567, year 2024",
    "describe the person at the door",
])
def test_leaves_ordinary_text_alone(sanitizer: PromptSanitizer, text: str) -> None:
    assert sanitizer.sanitize(text) == text


def test_counts_and_switches() -> None:
    s = PromptSanitizer(["Bob"], phones=False, email_placeholder="<e>")
    text, counts = s.sanitize_counted("Bob: bob@x.org, 555-123-4567")
    assert text == "[name]: <e>, 555-123-4567"
    assert counts == {"name": 1, "email": 1}
    assert PromptSanitizer()("no names configured, Bob") == "no names configured, Bob"


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_sanitizer_never_crashes_and_is_idempotent(text: str) -> None:
    s = PromptSanitizer(["Anna"])
    once = s.sanitize(text)
    assert s.sanitize(once) == once


@pytest.mark.parametrize("hostile", ["a" * 20000 + "@", "1 " * 10000, "a@" + "a." * 10000,
                                     ("b" * 60 + ".") * 300 + "@x", "+(" * 10000 + "1"])
def test_hostile_prompts_stay_fast(sanitizer: PromptSanitizer, hostile: str) -> None:
    start = time.perf_counter()
    sanitizer.sanitize(hostile)
    assert time.perf_counter() - start < 0.5


# ------------------------------------------------------------------ Gaussian mechanism


def test_classic_sigma_formula() -> None:
    sigma = gaussian_noise_sigma(0.5, 1e-5, 2.0)
    assert sigma == pytest.approx(math.sqrt(2 * math.log(1.25 / 1e-5)) * 2.0 / 0.5)
    with pytest.raises(ValueError, match="epsilon < 1"):
        gaussian_noise_sigma(1.0, 1e-5, 1.0)
    for eps, delta, sens in ((0, 1e-5, 1), (0.5, 0, 1), (0.5, 1, 1), (0.5, 1e-5, 0)):
        with pytest.raises(ValueError):
            gaussian_noise_sigma(eps, delta, sens)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 0.9, 2.0, 8.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-6])
def test_analytic_sigma_meets_delta_and_beats_classic(epsilon: float, delta: float) -> None:
    sigma = analytic_gaussian_sigma(epsilon, delta, 1.0)
    assert gaussian_delta(sigma, epsilon, 1.0) <= delta
    assert gaussian_delta(sigma * 0.999, epsilon, 1.0) > delta  # and it is (nearly) the least
    if epsilon < 1:
        assert sigma < gaussian_noise_sigma(epsilon, delta, 1.0)
    assert analytic_gaussian_sigma(epsilon, delta, 3.0) == pytest.approx(3.0 * sigma, rel=1e-6)


def test_clipping() -> None:
    x = np.array([[3.0, 4.0], [0.3, 0.4]])
    assert np.linalg.norm(clip_l2(x, 1.0)) == pytest.approx(1.0)
    rows = clip_l2(x, 1.0, per_row=True)
    assert np.allclose(np.linalg.norm(rows, axis=-1), [1.0, 0.5])
    assert np.array_equal(clip_l2(x, 100.0), x)


def test_feature_noise_statistics_and_contract() -> None:
    rng = np.random.default_rng(7)
    features = np.zeros((200, 64), dtype=np.float32)
    noised = add_feature_noise(features, 0.5, 1e-5, 1.0, rng, mechanism="classic")
    assert noised.dtype == np.float32 and noised.shape == features.shape
    assert not np.shares_memory(noised, features) and not features.any()
    expected = gaussian_noise_sigma(0.5, 1e-5, 2.0)  # whole-array clipping: sensitivity 2C
    assert float(noised.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(noised.mean())) < 0.05 * expected
    # Per-row clipping costs sqrt(rows) in sensitivity.
    per_row = feature_noise_sigma((200, 64), 0.5, 1e-5, 1.0, per_row=True, mechanism="classic")
    assert per_row == pytest.approx(expected * math.sqrt(200))
    # Reproducible with a seeded generator, different without one.
    a = add_feature_noise(features, 2.0, 1e-5, 1.0, np.random.default_rng(1))
    b = add_feature_noise(features, 2.0, 1e-5, 1.0, np.random.default_rng(1))
    assert np.array_equal(a, b) and not np.array_equal(a, add_feature_noise(features, 2.0,
                                                                            1e-5, 1.0))


def test_feature_noise_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        add_feature_noise(np.array([1.0, np.nan]), 0.5, 1e-5, 1.0)
    with pytest.raises(ValueError):
        add_feature_noise(np.array([]), 0.5, 1e-5, 1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        add_feature_noise(np.ones(3), 0.5, 1e-5, 0.0)
    with pytest.raises(ValueError, match="mechanism"):
        add_feature_noise(np.ones(3), 0.5, 1e-5, 1.0, mechanism="laplace")
    assert add_feature_noise(np.ones(3, dtype=np.int64), 0.5, 1e-5, 1.0).dtype == np.float64
