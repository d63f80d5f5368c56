"""Helpers shared by the `edgespec` tools (bench, demo, loadtest, serving, eval, fuzz) and the
tests: child processes and small statistics. Importing this module loads no model library."""

from __future__ import annotations

import collections
import importlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass

from .config import REPO


def drain(proc: subprocess.Popen, keep: int = 200) -> collections.deque:
    """Keep reading a child's output in a daemon thread (a full pipe would block the child);
    returns the last `keep` lines."""
    tail: collections.deque = collections.deque(maxlen=keep)
    out = proc.stdout
    assert out is not None, "drain needs stdout=subprocess.PIPE"
    threading.Thread(target=lambda: tail.extend(out), daemon=True).start()
    return tail


def spawn(args: list[str], ready_text: str) -> subprocess.Popen:
    """`python ARGS` from the checkout, one torch thread, returned once a line of its output
    contains `ready_text` (its later output is drained)."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", "EDGESPEC_THREADS": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if ready_text in line:
            drain(proc)
            return proc
    raise RuntimeError(f"{args} exited before it was ready")


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.array(values), q))


def expected_tokens_per_round(a: float, gamma: int) -> float:
    """(1 - a^(g+1)) / (1 - a): tokens per round for i.i.d. acceptance a and draft length g."""
    return gamma + 1.0 if a >= 1.0 else (1 - a ** (gamma + 1)) / (1 - a)


@dataclass(frozen=True)
class LazyCommand:
    """A subcommand's `func` that imports `module` only when the command runs, so that
    `edgespec CMD --help` and argument errors never load what the command itself needs."""

    module: str
    function: str

    def __call__(self, args):
        return getattr(importlib.import_module(self.module), self.function)(args)
