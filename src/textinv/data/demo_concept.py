"""A concept the project draws itself, so the demo and tests need nothing downloaded.

Five photos of one made-up toy (a red body with a yellow star and two dark eyes) at different places,
sizes and backgrounds. Deterministic: the same pixels on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from textinv.utils.atomic import atomic_write


def draw_toy(rng: np.random.Generator, size: int) -> Image.Image:
    bg = tuple(int(c) for c in rng.integers(90, 230, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(6):  # background clutter
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 20, size // 8))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(60, 255, 3)))
    r = int(size * rng.uniform(0.22, 0.32))
    cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(200, 30, 40), outline=(90, 10, 10), width=max(1, size // 64))
    star = [(cx + r * 0.6 * np.cos(a) * (1 if k % 2 == 0 else 0.45), cy + r * 0.6 * np.sin(a) * (1 if k % 2 == 0 else 0.45))
            for k, a in enumerate(np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1])]
    draw.polygon(star, fill=(250, 215, 40))
    for ex in (-0.35, 0.35):
        e = max(1, r // 8)
        draw.ellipse([cx + ex * r - e, cy - 0.75 * r - e, cx + ex * r + e, cy - 0.75 * r + e], fill=(20, 20, 20))
    return img


def synthesize_demo_concept(folder: Path, num_images: int = 5, size: int = 128, seed: int = 1234) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_images):
        img = draw_toy(rng, size)
        path = atomic_write(Path(folder) / f"{i:02d}.png", lambda p, img=img: img.save(p, format="PNG"))
        paths.append(path)
    return paths
