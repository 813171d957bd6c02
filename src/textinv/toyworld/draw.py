"""A few-shot concept set drawn from the world: fixed attributes, varied positions and sizes (and
whatever is left free), like a handful of photos of one thing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from textinv.data.images import DRAWN_RECORD, mask_file  # the core redraws a folder that holds DRAWN_RECORD
from textinv.utils.atomic import atomic_write, atomic_write_text
from textinv.toyworld.world import WORLD_SIZE, render, render_mask, sample_scene

ATTRIBUTES = ("shape", "color", "background", "style", "size")


def draw_concept(out: str | Path, n: int = 5, seed: int = 0, px: int = WORLD_SIZE, masks: bool = False,
                 **fixed) -> list[Path]:
    """Write `n` PNGs (00.png, ...) of scenes with the `fixed` attributes (a value or a list each); `masks`: each
    with its subject's mask beside it (00-masklabel.png, for data.masked=true). The images do not depend on it."""
    fixed = {k: v for k, v in fixed.items() if v not in (None, [], ())}
    unknown = set(fixed) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; known: {', '.join(ATTRIBUTES)}")
    out = Path(out)
    rng = np.random.default_rng([seed, 424242])
    paths = []
    written = []
    for i in range(n):
        scene = sample_scene(rng, **fixed)
        img = render(scene, px)
        paths.append(atomic_write(out / f"{i:02d}.png", lambda p, img=img: img.save(p, format="PNG")))
        written.append(paths[-1].name)
        if masks:
            mask = render_mask(scene, px)
            written.append(atomic_write(mask_file(paths[-1]), lambda p, m=mask: m.save(p, format="PNG")).name)
    record = out / DRAWN_RECORD
    if record.is_file():  # a redraw with fewer images (or without masks): the old extra files would join the set
        old = json.loads(record.read_text())
        for name in (set(old["files"]) | set(old.get("mask_files", []))) - set(written):
            (out / name).unlink(missing_ok=True)
    atomic_write_text(record, json.dumps({"files": [p.name for p in paths], "mask_files": written[1::2] if masks else [],
                                          "n": n, "seed": seed, "px": px, "masks": masks, **fixed}, indent=2))
    return paths
