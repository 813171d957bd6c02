"""The miniature world: captioned pictures of one shape each, drawn procedurally and deterministically.

A scene is one shape (6 kinds) of one colour (8) and size (3) somewhere on a plain background (5),
drawn in one of four renderings. Captions speak the language of the Textual Inversion templates ("a
photo of a red star on a blue background", "a painting of a green circle in the style of hatching")
and often name only some attributes, or say "shape"/"object" for the shape, so a generic initializer
word means something here, as "toy" does in real Stable Diffusion.

Two things are deliberately never captioned, so textual inversion has something no word names:
- the `dotted` rendering is drawn but never named (the style concept);
- the full look of each reserved object concept (shape + colour + rendering) is never named at once.
Every scene and caption is a pure function of (seed, index).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "heart")
COLORS = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (245, 220, 40), "green": (40, 170, 60),
    "blue": (40, 80, 220), "purple": (140, 50, 190), "white": (250, 250, 250), "black": (20, 20, 20),
}
BACKGROUNDS = {
    "white": (250, 250, 250), "gray": (128, 128, 128), "black": (20, 20, 20), "blue": (40, 80, 220),
    "green": (40, 170, 60),
}
STYLES = ("filled", "outlined", "hatched", "dotted")
CAPTIONED_STYLES = ("filled", "outlined", "hatched")  # `dotted` is drawn, never named
STYLE_PHRASE = {"filled": "flat color", "outlined": "outlines", "hatched": "hatching"}
STYLE_ADJECTIVE = {"filled": "filled", "outlined": "outlined", "hatched": "hatched"}
SIZES = {"small": 0.16, "medium": 0.24, "large": 0.33}  # shape radius as a fraction of the image side
GENERIC_NOUNS = ("shape", "object")
PREFIXES = ("a photo of", "a drawing of", "a painting of", "a rendering of", "a picture of", "a cropped photo of",
            "a close-up photo of", "a good photo of", "a rendition of", "a bright photo of")
ARTICLES = ("a", "the", "one")

# Looks never captioned in full: the object concepts of conf/concept/toy_*.yaml.
RESERVED_LOOKS = ({"shape": "heart", "color": "orange", "style": "outlined"},)

WORLD_SIZE = 64  # pixels: what the pretrained models see
SUPERSAMPLE = 3  # drawn larger, then downsampled: anti-aliased edges


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str
    style: str
    size: str
    x: float  # centre, as a fraction of the side
    y: float

    @property
    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "background": self.background, "style": self.style,
                "size": self.size}


def rng_for(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _place(rng: np.random.Generator, size: str) -> tuple[float, float]:
    r = SIZES[size]
    lo, hi = r + 0.03, 1 - r - 0.03
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def sample_scene(rng: np.random.Generator, **fixed) -> Scene:
    """A random scene; any attribute can be fixed (a value, or a tuple of allowed values)."""

    def pick(name: str, options) -> str:
        want = fixed.get(name)
        if isinstance(want, str):
            return want
        choices = [o for o in (list(want) if want is not None else options) if o in options]
        if not choices:
            raise ValueError(f"no allowed {name} among {want}; known: {', '.join(options)}")
        return str(rng.choice(choices))

    shape = pick("shape", SHAPES)
    color = pick("color", tuple(COLORS))
    # the shape stays visible: never its own colour as background
    background = pick("background", tuple(b for b in BACKGROUNDS if b != color) or tuple(BACKGROUNDS))
    style = pick("style", STYLES)
    size = pick("size", tuple(SIZES))
    x, y = _place(rng, size)
    return Scene(shape, color, background, style, size, x, y)


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------

def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The shape's boundary as a polygon (pixels of the supersampled canvas)."""
    if shape == "circle":
        a = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        return list(zip(cx + r * np.cos(a), cy + r * np.sin(a)))
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        a = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return list(zip(cx + r * np.cos(a), cy + r * 0.95 * np.sin(a) + r * 0.15))
    if shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return list(zip(cx + radius * np.cos(a), cy + radius * np.sin(a)))
    if shape == "hexagon":
        a = np.arange(6) * np.pi / 3
        return list(zip(cx + r * np.cos(a), cy + r * np.sin(a)))
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
        hx = 16 * np.sin(t) ** 3
        hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        k = r / 16.5
        return list(zip(cx + k * hx, cy + k * hy + r * 0.1))
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _masks(shape: str, side: int, cx: float, cy: float, r: float, line: float) -> tuple[np.ndarray, np.ndarray]:
    """(inside, edge) masks: the filled polygon, and its boundary drawn `line` pixels wide."""
    points = _outline(shape, cx, cy, r)
    inside, edge = Image.new("L", (side, side), 0), Image.new("L", (side, side), 0)
    ImageDraw.Draw(inside).polygon(points, fill=255)
    ImageDraw.Draw(edge).line(points + points[:1], fill=255, width=max(1, round(line)), joint="curve")
    return np.asarray(inside) > 127, np.asarray(edge) > 127


def _paint_mask(style: str, inside: np.ndarray, edge: np.ndarray, thin_edge: np.ndarray, unit: int) -> np.ndarray:
    """Which pixels take the shape's colour in each rendering (`unit`: canvas pixels per image pixel)."""
    if style == "filled":
        return inside | edge
    if style == "outlined":
        return edge
    yy, xx = np.mgrid[: inside.shape[0], : inside.shape[1]]
    if style == "hatched":
        return edge | (inside & (((xx + yy) % (6 * unit)) < 2 * unit))
    if style == "dotted":
        period = 5 * unit
        dy, dx = (yy % period) - period / 2, (xx % period) - period / 2
        return thin_edge | (inside & (dx * dx + dy * dy <= (1.2 * unit) ** 2))
    raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")


def render(scene: Scene, size: int = WORLD_SIZE) -> Image.Image:
    side = size * SUPERSAMPLE
    unit = side / WORLD_SIZE  # line widths and pattern periods scale with the image
    cx, cy, r = scene.x * side, scene.y * side, SIZES[scene.size] * side
    inside, edge = _masks(scene.shape, side, cx, cy, r, 3 * unit)
    thin_edge = _masks(scene.shape, side, cx, cy, r, unit)[1] if scene.style == "dotted" else edge
    paint = _paint_mask(scene.style, inside, edge, thin_edge, round(unit))
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = BACKGROUNDS[scene.background]
    canvas[paint] = COLORS[scene.color]
    return Image.fromarray(canvas).resize((size, size), Image.Resampling.BOX)


def render_mask(scene: Scene, size: int = WORLD_SIZE) -> Image.Image:
    """The subject's mask ("L", 255 = the shape): its whole filled outline, whatever its rendering paints, drawn as
    `render` draws the scene (same supersampling, so edge pixels are partial)."""
    side = size * SUPERSAMPLE
    unit = side / WORLD_SIZE
    inside, edge = _masks(scene.shape, side, scene.x * side, scene.y * side, SIZES[scene.size] * side, 3 * unit)
    return Image.fromarray(((inside | edge) * 255).astype(np.uint8), "L").resize((size, size), Image.Resampling.BOX)


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

def _reserved(scene: Scene) -> dict | None:
    return next((look for look in RESERVED_LOOKS if all(scene.attributes[k] == v for k, v in look.items())), None)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One of many captions of a scene; which attributes it names is random."""
    style_named = scene.style in CAPTIONED_STYLES and rng.random() < 0.6
    if style_named and rng.random() < 0.12:  # a style on its own, as the style templates say it
        lead = str(rng.choice(["a painting", "a drawing", "a picture", "a rendering"]))
        return f"{lead} in the style of {STYLE_PHRASE[scene.style]}"
    named = {
        "color": rng.random() < 0.75,
        "shape": rng.random() < 0.8,
        "size": rng.random() < 0.3,
        "background": rng.random() < 0.55,
    }
    look = _reserved(scene)
    if look is not None and named["color"] and named["shape"] and style_named:
        named[str(rng.choice(["color", "shape"]))] = False  # the reserved look is never named in full
    style_as_adjective = style_named and rng.random() < 0.4
    words = []
    if named["size"]:
        words.append(scene.size)
    if style_as_adjective:
        words.append(STYLE_ADJECTIVE[scene.style])
    if named["color"]:
        words.append(scene.color)
    words.append(scene.shape if named["shape"] else str(rng.choice(GENERIC_NOUNS)))
    text = f"{rng.choice(PREFIXES)} {rng.choice(ARTICLES)} {' '.join(words)}"
    if named["background"]:
        text += f" on a {scene.background} background"
    if style_named and not style_as_adjective:
        text += f" in the style of {STYLE_PHRASE[scene.style]}"
    return text


def full_caption(scene: Scene, prefix: str = "a photo of a") -> str:
    """The caption naming every captionable attribute (held-out evaluation of the text-to-image model)."""
    text = f"{prefix} {scene.color} {scene.shape} on a {scene.background} background"
    if scene.style in CAPTIONED_STYLES:
        text += f" in the style of {STYLE_PHRASE[scene.style]}"
    return text


def scene_at(seed: int, index: int) -> Scene:
    return sample_scene(rng_for(seed, index, 0))


def caption_at(seed: int, index: int, draw: int) -> str:
    """Caption number `draw` of scene `index` (a different one every time the scene is seen)."""
    return caption(scene_at(seed, index), rng_for(seed, index, 1000 + draw))


def with_attributes(scene: Scene, **changes) -> Scene:
    return replace(scene, **changes)
