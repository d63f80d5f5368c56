"""The chi-square test the sampling-exactness tests compare counts with exact distributions by."""

from __future__ import annotations

import torch


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int, float, float]:
    """(statistic, degrees of freedom, p-value, total variation) of `counts` against `probs`;
    cells expected below 5 are pooled into one."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    total = float(counts.sum())
    expected = probs * total
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = int(obs.numel()) - 1
    p = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                      torch.tensor(stat / 2, dtype=torch.float64)))
    tv = 0.5 * float((counts / total - probs).abs().sum())
    return stat, dof, p, tv
