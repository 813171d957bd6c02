"""PNG figures in memory: the project's own plot functions (textinv.runs.report / sweep_report) write files,
so they draw into a temporary folder and the bytes are served; the run page's curves are drawn here."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from textinv.runs.report import pyplot


def png_of(draw: Callable[[Path], Path]) -> bytes:
    """`draw(path)` writes a PNG; its bytes."""
    with tempfile.TemporaryDirectory(prefix="textinv-app-") as tmp:
        return Path(draw(Path(tmp) / "plot.png")).read_bytes()


def figure_png(fig) -> bytes:
    plt = pyplot()
    try:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def curves_png(panels: Sequence[tuple[str, dict[str, list[tuple[float, float]]]]]) -> bytes:
    """One panel per (title, {line label: [(x, y), ...]}); panels without points say so."""
    plt = pyplot()
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.2), dpi=100,
                             squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        drawn = False
        for label, pts in lines.items():
            pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 40 else None,
                        label=label)
                drawn = True
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.grid(alpha=0.3)
    return figure_png(fig)
