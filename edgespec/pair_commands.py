"""The `train-default` and `eval-default` subcommands: their flags, wired so that `--help` and
argument errors load no model library (edgespec.train_default and edgespec.eval_default,
which need torch, are imported only when a command runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .defaultpair.config import DEFAULT_MODELS_DIR, EvalConfig, TrainConfig
from .toolkit import LazyCommand

TRAIN_HELP = "train the built-in target/draft model pair"
EVAL_HELP = "measure the built-in model pair on held-out scenes"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``train-default``."""
    defaults = TrainConfig()
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help=f"folder for target/ and draft/ (default {DEFAULT_MODELS_DIR})",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=defaults.max_minutes,
        help="hard wall-clock cap for the whole run (default %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="run seed (default %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--features-cache", type=Path, default=None, metavar="FILE",
                        help="keep the training scenes' features in this .npz and reuse them when the "
                             "seeds and shape match (computing them is most of a run on 2 cores)")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``eval-default``."""
    defaults = EvalConfig()
    parser.add_argument(
        "--models",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help="folder holding target/ and draft/ (default: the built-in pair), or a fetched model's name "
             "(it drafts for itself; edgespec models list)",
    )
    parser.add_argument(
        "--scenes", type=int, default=defaults.scenes,
        help="held-out synthetic scenes, 0 for none (default %(default)s)"
    )
    parser.add_argument(
        "--gamma",
        type=int,
        default=defaults.gamma,
        help="draft tokens per round (default %(default)s)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the report as JSON here"
    )
    parser.add_argument("--footage", type=Path, default=None, metavar="DIR",
                        help="also caption the labelled real clips in DIR")
    parser.add_argument("--labels", type=Path, default=None, metavar="FILE",
                        help="labels of the clips (default: DIR/labels.json, else the built-in labels)")
    parser.add_argument("--keyframes", type=Path, default=None, metavar="DIR",
                        help="save a key frame of each captioned event here (JPEG)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                        help="write the footage captions as a Markdown page (key frames linked)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: Any) -> None:
    """Add ``train-default`` and ``eval-default`` to an argparse subparsers object."""
    parser = subparsers.add_parser("train-default", help=TRAIN_HELP)
    add_train_arguments(parser)
    parser.set_defaults(func=LazyCommand("edgespec.train_default", "_run"))
    parser = subparsers.add_parser("eval-default", help=EVAL_HELP)
    add_eval_arguments(parser)
    parser.set_defaults(func=LazyCommand("edgespec.eval_default", "_run"))
