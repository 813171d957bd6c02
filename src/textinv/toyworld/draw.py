"""A few-shot concept set drawn from the world: fixed attributes, varied positions and sizes (and
whatever is left free), like a handful of photos of one thing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from textinv.data.images import DRAWN_RECORD  # the core redraws a folder that holds it
from textinv.utils.atomic import atomic_write, atomic_write_text
from textinv.toyworld.world import WORLD_SIZE, render, sample_scene

ATTRIBUTES = ("shape", "color", "background", "style", "size")


def draw_concept(out: str | Path, n: int = 5, seed: int = 0, px: int = WORLD_SIZE, **fixed) -> list[Path]:
    """Write `n` PNGs (00.png, ...) of scenes with the `fixed` attributes (a value or a list each)."""
    fixed = {k: v for k, v in fixed.items() if v not in (None, [], ())}
    unknown = set(fixed) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; known: {', '.join(ATTRIBUTES)}")
    out = Path(out)
    rng = np.random.default_rng([seed, 424242])
    paths = []
    for i in range(n):
        img = render(sample_scene(rng, **fixed), px)
        paths.append(atomic_write(out / f"{i:02d}.png", lambda p, img=img: img.save(p, format="PNG")))
    record = out / DRAWN_RECORD
    if record.is_file():  # a redraw with fewer images: the old extra ones would join the set
        for name in set(json.loads(record.read_text())["files"]) - {p.name for p in paths}:
            (out / name).unlink(missing_ok=True)
    atomic_write_text(record, json.dumps({"files": [p.name for p in paths], "n": n, "seed": seed, "px": px,
                                          **fixed}, indent=2))
    return paths
