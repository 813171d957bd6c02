"""Choose the light evaluation protocol from measurements: how close are few-step solvers and fewer images
to the full protocol (DDIM 50, 64 images per prompt)?

On the pretrained miniature world (model=toy, its own CLIP), with the concept's evaluation prompts and the
initializer word, or with a learned embedding (--embedding RUN/<name>.pt: its token in place of {}):
1. solvers: for each (scheduler, steps), the same seeds as DDIM 50; mean absolute pixel difference to
   the DDIM-50 image (0-1 scale), and the change of each prompt's CLIP-I/CLIP-T score;
2. images: with DDIM 50, how far the score of the first n images (what a light protocol with n images per
   prompt computes: seeds seed+0..n-1) is from the 64-image score, and the spread over random n-subsets.
Usage: python experiments/light_protocol.py --out outputs/light_protocol [--images 32] [--solver-images 8]
       [--embedding RUN/<name>.pt] [--solvers ddim:20,dpm:20]
Writes light_protocol.json and prints a table.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from textinv.cli import Parser, script_logging  # noqa: E402

SOLVERS = [("ddim", 20), ("dpm", 10), ("dpm", 15), ("dpm", 20), ("dpm", 25), ("unipc", 10), ("unipc", 15),
           ("unipc", 20)]


def scores(evaluator, images, word):
    """Per prompt: (CLIP-I vs the training images, CLIP-T vs the placeholder-free text)."""
    from textinv.evaluation.metrics import clip_i, clip_t

    out = []
    for template, row in zip(evaluator.templates, images):
        emb = evaluator.clip.image_embeddings(row)
        text = evaluator.clip.text_embeddings([template.replace("{}", "")])
        out.append((clip_i(evaluator.train_clip, emb), clip_t(text, emb), emb))
    return out


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=32, help="images per prompt of the DDIM-50 reference")
    p.add_argument("--solver-images", type=int, default=8, help="images per prompt for the solver comparison")
    p.add_argument("--overrides", nargs="*", default=["experiment=toyworld"])
    p.add_argument("--embedding", type=Path, help="a learned embedding file: its token instead of the initializer")
    p.add_argument("--solvers", help="scheduler:steps,... (default: " + ",".join(f"{a}:{b}" for a, b in SOLVERS) + ")")
    args = p.parse_args()
    script_logging()
    torch.set_grad_enabled(False)
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from textinv.evaluation.evaluator import Evaluator
    from textinv.methods.textual_inversion.loading import load_embeddings
    from textinv.models.generation import ImageGenerator

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=args.overrides + ["run_dir=/tmp/unused"])
    concept = instantiate(cfg.concept, _convert_="all")
    dm = instantiate(cfg.data, _partial_=True, _convert_="all")(concept=concept)
    dm.load()
    ev_cfg = instantiate(cfg.eval, _convert_="all")
    evaluator = Evaluator(ev_cfg, concept.kind, concept.prompts, dm.images)
    frozen = instantiate(cfg.model).load()
    word = str(cfg.init)
    solvers = SOLVERS if not args.solvers else [(a, int(b)) for a, b in (x.split(":") for x in args.solvers.split(","))]
    from textinv.models.generation import make_scheduler

    gen = ImageGenerator.from_frozen(frozen)
    if args.embedding is not None:
        word = load_embeddings(gen, [args.embedding])[0]
    prompts = [t.format(word) for t in evaluator.templates]
    res = ev_cfg.resolution
    common = dict(seed=ev_cfg.seed, guidance_scale=ev_cfg.guidance_scale, height=res, width=res, batch_size=16,
                  output_type="np")

    def sample(scheduler, steps, n):
        gen.pipe.scheduler = make_scheduler(frozen.noise_scheduler, scheduler)
        t0 = time.perf_counter()
        arrays = gen.generate(prompts, n, steps=steps, **common)
        seconds = time.perf_counter() - t0
        from PIL import Image

        pil = [[Image.fromarray((a * 255).round().astype("uint8")) for a in row] for row in arrays]
        return arrays, pil, seconds

    ref_np, ref_pil, ref_s = sample("ddim", 50, args.images)
    print(f"reference DDIM 50 done: {ref_s:.1f} s", flush=True)
    ref = scores(evaluator, ref_pil, word)
    k = args.solver_images
    ref_k = scores(evaluator, [row[:k] for row in ref_pil], word)
    result = {"model": frozen.name, "concept": concept.name, "word": word, "prompts": prompts,
              "reference": {"scheduler": "ddim", "steps": 50, "images": args.images, "seconds": ref_s,
                            "clip_i": [r[0] for r in ref], "clip_t": [r[1] for r in ref]},
              "solvers": [], "images": []}
    for scheduler, steps in solvers:
        arr, pil, secs = sample(scheduler, steps, k)
        sc = scores(evaluator, pil, word)
        pix = float(np.mean([np.abs(a - b).mean() for ra, rb in zip(arr, ref_np) for a, b in zip(ra, rb[:k])]))
        d_i = [abs(a[0] - b[0]) for a, b in zip(sc, ref_k)]
        d_t = [abs(a[1] - b[1]) for a, b in zip(sc, ref_k)]
        # per-image CLIP embedding agreement with the DDIM-50 image of the same seed
        cos = float(np.mean([torch.nn.functional.cosine_similarity(a[2], b[2], dim=-1).mean().item()
                             for a, b in zip(sc, ref_k)]))
        result["solvers"].append({"scheduler": scheduler, "steps": steps, "pixel_mad": pix, "max_dclip_i": max(d_i),
                                  "mean_dclip_i": statistics.fmean(d_i), "max_dclip_t": max(d_t),
                                  "mean_dclip_t": statistics.fmean(d_t), "clip_emb_cos": cos, "seconds": secs})
        print(json.dumps(result["solvers"][-1]), flush=True)
    rng = random.Random(0)
    for n in (1, 2, 4, 8, 16, 32):
        if n >= args.images:
            continue
        first = scores(evaluator, [row[:n] for row in ref_pil], word)
        spread_i, spread_t = [], []
        for p, (template, row) in enumerate(zip(evaluator.templates, ref_pil)):
            emb = ref[p][2]
            text = evaluator.clip.text_embeddings([template.replace("{}", "")])
            from textinv.evaluation.metrics import clip_i, clip_t

            subs = [rng.sample(range(args.images), n) for _ in range(200)]
            spread_i.append(statistics.stdev(clip_i(evaluator.train_clip, emb[s]) for s in subs))
            spread_t.append(statistics.stdev(clip_t(text, emb[s]) for s in subs))
        result["images"].append({
            "n": n, "max_dclip_i_first_n": max(abs(a[0] - b[0]) for a, b in zip(first, ref)),
            "max_dclip_t_first_n": max(abs(a[1] - b[1]) for a, b in zip(first, ref)),
            "reconstruction_first_n": first[0][0], "reconstruction_all": ref[0][0],
            "editability_first_n": statistics.fmean(f[1] for f in first[1:]),
            "editability_all": statistics.fmean(r[1] for r in ref[1:]),
            "mean_sd_clip_i": statistics.fmean(spread_i), "mean_sd_clip_t": statistics.fmean(spread_t)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "light_protocol.json").write_text(json.dumps(result, indent=2))
    print(f"reference DDIM 50, {args.images} images/prompt, {len(prompts)} prompts: {ref_s:.1f} s")
    print("solver     steps  pixel MAD  max|dCLIP-I|  max|dCLIP-T|  CLIP cos to DDIM-50  seconds")
    for s in result["solvers"]:
        print(f"{s['scheduler']:8s} {s['steps']:7d}  {s['pixel_mad']:.4f}     {s['max_dclip_i']:.4f}        "
              f"{s['max_dclip_t']:.4f}        {s['clip_emb_cos']:.4f}           {s['seconds']:.1f}")
    print("images/prompt  max|dCLIP-I| first n  max|dCLIP-T| first n  sd CLIP-I  sd CLIP-T (random n-subsets)")
    for s in result["images"]:
        print(f"{s['n']:13d}  {s['max_dclip_i_first_n']:.4f}               {s['max_dclip_t_first_n']:.4f}"
              f"                {s['mean_sd_clip_i']:.4f}     {s['mean_sd_clip_t']:.4f}")


if __name__ == "__main__":
    main()
