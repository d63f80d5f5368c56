"""Data of the default pair: the shared tokenizer, scene features, caption batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast

from camera_node.capture import Frame
from camera_node.captions import CAPTION_PROMPT, VOCABULARY, caption_for_facts
from camera_node.events import detect_events
from camera_node import features as F
from camera_node.features import FeatureExtractor, ObjectFeatures, decode_facts
from camera_node.scene import MOTION_SECONDS, Scene, random_scene, render
from edgespec.defaultpair.config import EVAL_SEED_BASE, SEED_STRIDE, TRAIN_SEED_BASE

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer both models share: specials, then the grammar's words.

    It adds no special tokens by itself (no post-processor), so ``CAPTION_PROMPT`` encodes to
    the same ids with or without ``add_special_tokens``; the vision prefix starts every
    sequence and the model ends captions with ``<eos>``.
    """
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *VOCABULARY))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # "describe:" -> "describe", ":"
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )


def prompt_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Token ids of ``CAPTION_PROMPT``: what follows the vision prefix in every sequence."""
    return list(tokenizer(CAPTION_PROMPT, add_special_tokens=False)["input_ids"])


def train_seeds(seed: int, count: int) -> list[int]:
    """Scene seeds of the training split for run ``seed`` (disjoint from :func:`eval_seeds`)."""
    if count > SEED_STRIDE:
        raise ValueError(f"at most {SEED_STRIDE} training scenes per run seed, asked for {count}")
    start = TRAIN_SEED_BASE + seed * SEED_STRIDE
    if start + count > EVAL_SEED_BASE:
        raise ValueError(f"run seed {seed} would reach the evaluation seeds")
    return list(range(start, start + count))


def eval_seeds(count: int) -> list[int]:
    """Held-out scene seeds for evaluation."""
    return list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + count))


SCENE_FPS = 10.0  # what a synthetic camera source shows by default
LEAD_FRAMES = 3  # empty scene before the objects appear (the event's `before` frame)
STILL_FRAMES = 10  # still frames after the motion, enough to end the event


def scene_frames(scene: Scene, fps: float = SCENE_FPS) -> list[Frame]:
    """The frames a camera would see: the empty scene, the motion, then the scene still."""
    moving = int(MOTION_SECONDS * fps + 1e-9) + 1
    times = [(k - LEAD_FRAMES) / fps for k in range(LEAD_FRAMES + moving)]
    frames = [Frame(render(scene, t), t, k) for k, t in enumerate(times)]
    last, n = frames[-1].image, len(frames)
    frames += [Frame(last.copy(), times[-1] + (k + 1) / fps, n + k) for k in range(STILL_FRAMES)]
    return frames


def scene_features(scene: Scene, extractor: FeatureExtractor) -> np.ndarray:
    """Features [S, D] of the scene's first motion event, exactly as a camera computes them
    (motion detector, then the extractor); zeros when the detector finds no event."""
    events = detect_events(scene_frames(scene))
    if not events:
        return np.zeros(extractor.feature_shape, np.float32)
    return extractor.extract(events[0])


_WORKER_EXTRACTOR: ObjectFeatures | None = None  # one per worker process (its HOG detector)


def _features_of_seed(seed: int) -> np.ndarray:
    global _WORKER_EXTRACTOR
    if _WORKER_EXTRACTOR is None:
        _WORKER_EXTRACTOR = ObjectFeatures()
    return scene_features(random_scene(seed), _WORKER_EXTRACTOR)


def compute_features(
    seeds: Sequence[int],
    extractor: FeatureExtractor | None = None,
    progress: bool = True,
    desc: str = "features",
    workers: int = 1,
) -> tuple[list[Scene], np.ndarray]:
    """Scenes of ``seeds`` and their features [N, S, D] float32 (computed once, kept in memory).

    ``workers`` > 1 spreads the default extractor over processes (same results, in order).
    """
    scenes = [random_scene(s) for s in seeds]
    if extractor is None and workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers)
        try:
            rows = list(tqdm(pool.imap(_features_of_seed, seeds, chunksize=8), total=len(seeds),
                             desc=desc, disable=not progress, leave=False))
        finally:
            pool.close()  # the workers finish and exit (terminate would signal them)
            pool.join()
        return scenes, np.stack(rows).astype(np.float32)
    extractor = extractor or ObjectFeatures()
    out = np.zeros((len(scenes), *extractor.feature_shape), np.float32)
    for i, scene in enumerate(tqdm(scenes, desc=desc, disable=not progress, leave=False)):
        out[i] = scene_features(scene, extractor)
    return scenes, out


_WORD_GROUPS = (F.F_KIND, F.F_COLOUR, F.F_DIRECTION, F.F_ENTRY, F.F_EXIT)


def shuffle_words(features: np.ndarray, rng: np.random.Generator, noise: float = 0.3) -> np.ndarray:
    """A copy of features [S, D] whose occupied slots say other words: each one-hot group
    (kind, colour, direction, entry, exit) and the stop flag drawn afresh, the measurements
    jittered. Real cameras meet combinations the synthetic world rarely makes (one thing
    that stops, a vehicle going away): the models must word any of them, not guess from
    the measurements (tests: the committed pair says what its features say)."""
    out = features.copy()
    for row in out:
        if row[F.F_PRESENT] < 0.5:
            continue
        for group in _WORD_GROUPS:
            row[group] = 0.0
            row[group.start + int(rng.integers(group.stop - group.start))] = 1.0
        row[F.F_STOPPED] = float(rng.random() < 0.3)
        row[F.F_MEASURED] += rng.normal(0.0, noise, row[F.F_MEASURED].shape).astype(np.float32)
    return out


class CaptionBatches:
    """Endless shuffled batches of (features, token ids, loss mask) over cached scenes.

    Each time a scene comes up it gets a freshly drawn caption of what its features say
    (:func:`camera_node.features.decode_facts`), so the models learn to put the device's
    measurements into words, in the grammar's variety rather than one wording per scene. Token layout of one row:
    ``prompt + caption + <eos>`` right-padded with ``<pad>``; the mask marks the positions
    whose *next* token is a caption token or ``<eos>`` (what the loss is computed on).
    Rows are bucketed by length: ``bucket_batches`` batches are drawn at once, sorted by
    length, cut into batches and served in random order, so little compute goes on padding.
    A share ``shuffled`` of the rows get :func:`shuffle_words` features (and their caption).
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        features: np.ndarray,
        tokenizer: PreTrainedTokenizerFast,
        batch_size: int,
        seed: int,
        bucket_batches: int = 16,
        shuffled: float = 0.0,
    ) -> None:
        self.scenes = scenes
        self.features = features  # [N, S, D]
        self.shuffled = shuffled
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.rng = np.random.default_rng(seed)
        self.prompt = prompt_ids(tokenizer)
        self._order: list[int] = []
        self._ready: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _next_index(self) -> int:
        """The next scene index, reshuffling at each epoch."""
        if not self._order:
            self._order = self.rng.permutation(len(self.scenes)).tolist()
        return self._order.pop()

    def token_row(self, caption: str) -> list[int]:
        """prompt + caption + eos ids of one caption."""
        ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"]
        return self.prompt + list(ids) + [self.tokenizer.eos_token_id]

    def collate(self, rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, T] (right-padded) and loss mask [B, T] of token rows."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            # Position j predicts token j+1; the first predicted token follows the prompt.
            mask[i, len(self.prompt) - 1 : len(row) - 1] = True
        return ids, mask

    def _refill(self) -> None:
        """Draw, caption and bucket the next ``bucket_batches`` batches."""
        pool = [self._next_index() for _ in range(self.batch_size * self.bucket_batches)]
        feats = [
            shuffle_words(self.features[i], self.rng) if self.rng.random() < self.shuffled
            else self.features[i]
            for i in pool
        ]
        rows = [self.token_row(caption_for_facts(decode_facts(f), self.rng)) for f in feats]
        by_length = sorted(range(len(pool)), key=lambda k: (len(rows[k]), k))
        chunks = [by_length[k : k + self.batch_size] for k in range(0, len(pool), self.batch_size)]
        for c in self.rng.permutation(len(chunks)).tolist():
            ids, mask = self.collate([rows[k] for k in chunks[c]])
            batch = torch.from_numpy(np.stack([feats[k] for k in chunks[c]]))  # [B, S, D]
            self._ready.append((batch, ids, mask))

    def __iter__(self) -> CaptionBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """features [B, S, D], token ids [B, T], loss mask [B, T]."""
        if not self._ready:
            self._refill()
        return self._ready.pop()
