"""A line chart as a PNG, drawn with OpenCV (a dependency already): no plotting library."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

WIDTH, HEIGHT = 900, 560
LEFT, RIGHT, TOP, BOTTOM = 80, 230, 50, 60
COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23)]  # BGR


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= value:
            return m * step
    return 10 * step


def line_chart(series: dict[str, list[tuple[float, float]]], path: str | Path, *, title: str, xlabel: str,
               ylabel: str) -> None:
    """One line per series (x, y points), x on a categorical axis of the x values given."""
    import cv2
    import numpy as np

    img = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    xs = sorted({x for pts in series.values() for x, _ in pts})
    y_max = _nice_max(max((y for pts in series.values() for _, y in pts), default=1.0) * 1.05)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> int:
        i = xs.index(x)
        return LEFT + (int(plot_w * i / (len(xs) - 1)) if len(xs) > 1 else plot_w // 2)

    def py(y: float) -> int:
        return TOP + plot_h - int(plot_h * y / y_max)

    font = cv2.FONT_HERSHEY_SIMPLEX
    for k in range(6):  # horizontal grid and y labels
        y = y_max * k / 5
        cv2.line(img, (LEFT, py(y)), (LEFT + plot_w, py(y)), (225, 225, 225), 1)
        cv2.putText(img, f"{y:g}", (8, py(y) + 4), font, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    for x in xs:
        cv2.putText(img, f"{x:g}", (px(x) - 8, TOP + plot_h + 20), font, 0.45, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(img, (LEFT, TOP), (LEFT + plot_w, TOP + plot_h), (90, 90, 90), 1)
    cv2.putText(img, title, (LEFT + 40, 24), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (LEFT + plot_w // 2 - 60, HEIGHT - 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (8, TOP - 12), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [(px(x), py(y)) for x, y in sorted(pts)]
        for a, b in itertools.pairwise(points):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(img, p, 4, colour, -1, cv2.LINE_AA)
        ly = TOP + 10 + 22 * i  # legend
        cv2.line(img, (WIDTH - RIGHT + 15, ly), (WIDTH - RIGHT + 45, ly), colour, 3, cv2.LINE_AA)
        cv2.putText(img, name, (WIDTH - RIGHT + 52, ly + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), img):
        raise ValueError(f"could not write the chart to {path}")
