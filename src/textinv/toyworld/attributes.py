"""What generated images of the miniature world show, read by the attribute classifier.

For each evaluation of a run (eval/images/step<N>/ or baseline/) and each prompt: the share of images
showing the concept's attributes (its fixed shape, colour, rendering), and the share showing what
the prompt itself asks for ("on a green background", "a red star", "in the style of hatching").
`python -m textinv.toyworld attributes RUN [RUN ...]` prints it and writes eval/attributes.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from textinv.runs.layout import ATTRIBUTES_FILE, PROMPTS_FILE, config_file, eval_dir, eval_images_dir, prompt_images
from textinv.utils.atomic import atomic_write_text
from textinv.toyworld.models import HEADS
from textinv.toyworld.world import STYLE_PHRASE

CONCEPT_KEYS = ("shape", "color", "style", "background")


def concept_attributes(draw: dict) -> dict[str, str]:
    """The attributes a drawn concept fixes to one value (the concept's look)."""
    out = {}
    for key in CONCEPT_KEYS:
        value = draw.get(key)
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if isinstance(value, str):
            out[key] = value
    return out


def prompt_attributes(prompt: str) -> dict[str, str]:
    """The attributes a prompt names in the world's caption language."""
    text, out = prompt.lower(), {}
    bg = re.search(r"on an? (\w+) background", text)
    if bg and bg.group(1) in HEADS["background"]:
        out["background"] = bg.group(1)
        text = text[: bg.start()] + text[bg.end():]
    for style, phrase in STYLE_PHRASE.items():
        if f"in the style of {phrase}" in text or re.search(rf"\b{style}\b", text):
            out["style"] = style
    words = re.findall(r"[a-z]+", text)
    for key in ("shape", "color"):
        named = [w for w in words if w in HEADS[key]]
        if len(named) == 1:
            out[key] = named[0]
    return out


def classify(classifier, images: list[Image.Image]) -> dict[str, list[str]] | None:
    """The classifier's reading of each image, per attribute (None for no images)."""
    from textinv.toyworld.models import pil_to_unit

    return classifier.predict(pil_to_unit(images)) if images else None


def rates(pred: dict[str, list[str]] | None, expected: dict[str, str]) -> dict[str, float]:
    """Share of classified images whose attribute equals the expected one, per attribute and all at once."""
    if not expected or pred is None:
        return {}
    hits = {k: [p == v for p in pred[k]] for k, v in expected.items()}
    n = len(next(iter(hits.values())))
    out = {k: sum(h) / n for k, h in hits.items()}
    out["all"] = sum(all(h[i] for h in hits.values()) for i in range(n)) / n
    return out


def _evaluations(run: Path) -> list[Path]:
    folders = [p for p in eval_images_dir(run).glob("*") if (p / PROMPTS_FILE).is_file()]
    # baseline[-light], then stepNNNNNN[-light] by step (a light and a full folder of one step: both kept)
    return sorted(folders, key=lambda p: (not p.name.startswith("baseline"),
                                          int(p.name[4:10]) if p.name.startswith("step") else -1, p.name))


def run_attributes(run: Path, classifier) -> dict:
    """Per evaluation and prompt: concept-attribute and prompt-attribute rates (a run of a drawn concept)."""
    import yaml

    config = yaml.safe_load(config_file(run).read_text())
    concept = config["concept"]
    look = concept_attributes(concept.get("draw") or {})
    placeholder, word = concept["placeholder"], str(config.get("init"))
    result = {"concept": concept["name"], "look": look, "evaluations": {}}
    for folder in _evaluations(run):
        templates = json.loads((folder / PROMPTS_FILE).read_text())
        images = [[Image.open(f).convert("RGB") for f in prompt_images(folder, p)]
                  for p in range(len(templates))]
        asked = [prompt_attributes(template.replace("{}", " ")) for template in templates]
        # Image k of every prompt starts from the same noise, and a weak model draws some attributes
        # (here: backgrounds) from the noise, not the words. So what a prompt asks for is also read on
        # the same-seed images of the first prompt that asks nothing: the prompt follows its words by
        # the difference, not by its own rate.
        preds = [classify(classifier, imgs) for imgs in images]  # each image read once
        c = next((i for i, a in enumerate(asked) if not a), None)
        per_prompt = [{"template": template, "concept": rates(pred, look), "prompt": rates(pred, a), "asked": a,
                       "images": len(imgs),
                       "same_seeds_unasked": rates(preds[c], a) if c is not None and len(images[c]) == len(imgs) else {}}
                      for template, imgs, pred, a in zip(templates, images, preds, asked)]
        result["evaluations"][folder.name] = per_prompt
    atomic_write_text(eval_dir(run) / ATTRIBUTES_FILE, json.dumps(result, indent=2))
    return result


def format_attributes(run: Path, result: dict) -> str:
    lines = [f"{run}: concept {result['concept']} {result['look']}"]
    for name, per_prompt in result["evaluations"].items():
        for entry in per_prompt:
            concept = entry["concept"].get("all")
            prompt, unasked = entry["prompt"].get("all"), entry.get("same_seeds_unasked", {}).get("all")
            lines.append(f"  {name:>10}  {entry['template']:<52} look {_pct(concept)}  prompt {_pct(prompt)}"
                         f"  (same seeds, not asked: {_pct(unasked)})")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "  -  " if value is None else f"{100 * value:4.0f}%"
