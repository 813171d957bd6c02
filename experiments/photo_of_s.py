"""What "a photo of S*" (the reconstruction prompt) draws, for trained runs and the SD row, in one process.

    python experiments/photo_of_s.py RUN [RUN ...] [--baseline] [--images 16] [--steps 20] [--out DIR]

Each trained run's learned word (its diffusers/learned_embeds.safetensors) in the miniature world's model, or with
--baseline also the initializer word (the SD row), generates `--images` images (seeds eval.seed + k, the eval
seeds; DDIM `--steps`, guidance 5) of the reconstruction prompt; the toy classifier reads shape, colour, rendering
and background. Cheaper than a run's full evaluation when only this prompt's attribute rates are needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    import yaml
    from hydra.utils import instantiate

    from textinv.methods.textual_inversion.method import TextualInversion
    from textinv.models.generation import ImageGenerator
    from textinv.toyworld import TOYWORLD_CLASSIFIER
    from textinv.toyworld.attributes import classify
    from textinv.toyworld.models import load_classifier

    classifier = load_classifier(TOYWORLD_CLASSIFIER)
    cfg = yaml.safe_load((args.runs[0] / "config.yaml").read_text())
    draw = cfg["concept"]["draw"]
    backgrounds = draw["background"] if isinstance(draw["background"], list) else [draw["background"]]
    source = instantiate(cfg["model"])
    jobs = [("SD (" + str(cfg["init"]) + ")", None)] if args.baseline else []
    jobs += [(str(r), r) for r in args.runs]
    results = {}
    for name, run in jobs:
        frozen = source.load()
        word = str(cfg["init"])
        if run is not None:
            method = TextualInversion(cfg["concept"]["placeholder"], cfg["init"])
            method.attach(frozen)
            vec = next(iter(load_file(str(run / "diffusers" / "learned_embeds.safetensors")).values()))
            with torch.no_grad():
                method.vectors.copy_(vec.reshape(method.vectors.shape))
            word = method.placeholder.token
        gen = ImageGenerator.from_frozen(frozen, scheduler="ddim")
        prompt = "a photo of {}".format(word)
        images = gen.generate([prompt], args.images, seed=args.seed, steps=args.steps, guidance_scale=5.0,
                              height=64, width=64, batch_size=args.images)[0]
        pred = classify(classifier, images)
        n = len(images)
        row = {"prompt": prompt, "images": n}
        for key in ("shape", "color", "style"):
            row[f"{key}={draw[key]}"] = sum(x == draw[key] for x in pred[key]) / n
        for bg in sorted(set(pred["background"])):
            row[f"bg={bg}"] = sum(x == bg for x in pred["background"]) / n
        row["train bg"] = sum(x in backgrounds for x in pred["background"]) / n
        results[name] = row
        print(json.dumps({name: row}), flush=True)
        if args.out:
            folder = args.out / (Path(name).name if run is not None else "baseline")
            folder.mkdir(parents=True, exist_ok=True)
            for k, img in enumerate(images):
                img.save(folder / f"{k:03d}.png")
    if args.out:
        (args.out / "photo_of_s.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
