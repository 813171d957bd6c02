"""`make bench`: training-step time and evaluation-generation throughput on the real SD 1.5 architecture.

Training: seconds per step and peak memory. Compared with the floor, one forward and backward of the
frozen text encoder and UNet alone, the training step adds only what textual inversion needs (embedding
swap, noise, loss, a 768-float AdamW update).
Generation: images per second for evaluation images at the eval defaults (DDIM, guidance 5.0, seeds
seed + k), batched (eval.batch_size images per pipeline call, what evaluation does) vs one image per
pipeline call (how peer tools render validation images); the same images either way. On CPU it uses
fewer sampler steps (--gen-steps, default 5 on CPU, 50 on GPU) and reports the per-step cost and a
projection to 50 steps (sampling time scales with steps; the VAE decode, timed separately, does not).
Evaluation cost: with both measured, the compute of a whole default `concept=deku_tree` run (its plan,
textinv.evaluation.plan) in seconds: training = micro-steps x s/step; evaluation = per image, its sampler steps
x s per image-step + one VAE decode, and the validation loss at half a guided image-step per UNet forward;
before (every evaluation full protocol, no validation loss) and after (today's defaults) side by side.
The light protocol (DDIM, fewer steps and images) costs one guided UNet pass per sampler step, as the full one does.
Each measurement runs in its own process so peak memory is its own.
SDXL (`--model sdxl_arch --parts floor,train,peer`): the floor runs both text encoders and the UNet with
its pooled and size conditioning; `peer` times diffusers' own textual_inversion_sdxl.py on the same
random weights saved with save_pretrained (textinv.bench.peer; --peer-script or $TEXTINV_PEER_SCRIPT).
Usage: python -m textinv.bench [--resolution 256] [--steps 6] [--model sd15_arch] [--gen-steps N]
       [--gen-images N] [--gen-batch 8] [--parts floor,train,generate] [--peer-script FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from textinv.cli import Parser

ROOT = Path(__file__).resolve().parents[3]  # the repository (src/textinv/bench/main.py)


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB


def floor(model: str, resolution: int, steps: int, device: str) -> dict:
    """Text encoder(s) + UNet forward and backward, gradients only as far as the token embeddings
    (SDXL: both encoders, penultimate states, pooled projection and size conditioning, via its family)."""
    from textinv.models.frozen_sd import ModelSource

    frozen = ModelSource(model).load().to(device)
    family, encoders, unet = frozen.family, frozen.text_encoders, frozen.unet
    for te in encoders:
        te.get_input_embeddings().register_forward_hook(lambda m, i, out: out.detach().requires_grad_())
    ids = [i.to(device) for i in family.tokenize(frozen.tokenizers, ["a photo of a toy"])]
    f = 2 ** (len(frozen.vae.config.block_out_channels) - 1)
    latents = torch.randn(1, 4, resolution // f, resolution // f, device=device)
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)
    times = []
    for _ in range(steps + 1):  # the first is warm-up (allocator, kernels): left out, as the other parts do
        t0 = time.perf_counter()
        cond = family.encode(encoders, frozen.tokenizers, ids)
        kwargs = family.unet_kwargs(cond, time_ids, unet.dtype)
        pred = unet(latents, torch.tensor([500], device=device), **kwargs).sample
        torch.nn.functional.mse_loss(pred, latents).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"seconds": times[1:]}


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


class _StepTimer:
    def __init__(self):
        import lightning as L

        timer = self

        class Cb(L.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.strategy.root_device.type == "cuda":
                    torch.cuda.synchronize()
                timer.marks.append(time.perf_counter())

        self.marks: list[float] = []
        self.callback = Cb()


def train_steps(model: str, resolution: int, steps: int, device: str, method: str = "textual_inversion",
                compile: bool = False, precision: str = "32", extra: tuple[str, ...] = ()) -> dict:
    """Seconds per training step (batch 1) through the real module and trainer; compile=True: compile=true
    (its compile time and break-even, timed by the module on the first micro-step, come back too)."""
    from hydra.utils import instantiate

    from textinv.training.job import build_trainer, prepare

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _compose(f"model={model}", f"method={method}", "concept=demo", f"data.resolution={resolution}",
                       f"compile={str(compile).lower()}", f"trainer.precision={precision}", *extra, "data.batch_size=1",
                       "trainer.accumulate_grad_batches=1", f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
                       f"steps={steps + 1}", "logger=csv", f"run_dir={tmp}", "~callbacks.model_checkpoint",
                       "~callbacks.progress_bar", "callbacks.embedding_writer.every_n_steps=0",
                       "callbacks.validation_loss.enabled=false",
                       "+trainer.enable_checkpointing=false")
        _, _, concept, source, datamodule, method = prepare(cfg)
        module = instantiate(cfg.module, _convert_="all")(frozen=source.load(), method=method, seed=cfg.seed)
        trainer = build_trainer(cfg)
        timer = _StepTimer()
        trainer.callbacks.append(timer.callback)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        marks = [start] + timer.marks
        optimizer_state = sum(t.numel() * t.element_size() for s in trainer.optimizers[0].state.values()
                              for t in s.values() if torch.is_tensor(t))
    # the first step includes the latent cache and warm-up (and, compiled, the compile): leave it out
    return {"seconds": [b - a for a, b in zip(marks[1:], marks[2:])], "optimizer_state_bytes": optimizer_state,
            "compile": module.compile_report, "first_step_s": marks[1] - marks[0]}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def generation(model: str, resolution: int, device: str, gen_steps: int, gen_images: int, gen_batch: int,
               compile: bool = False, dtype: str | None = None, modes: tuple[str, ...] = ("batched", "single"),
               backend: str = "inductor") -> dict:
    """Evaluation images per second: `gen_batch` images per pipeline call vs one image per call.
    compile=True: the frozen model as compile=true makes it (the warm-up then holds the compile: `warmup_s`).
    dtype: the frozen weights' dtype (bf16 on a GPU, as training with bf16 frozen weights samples)."""
    import numpy as np

    from textinv.evaluation.evaluator import EvalConfig
    from textinv.models.frozen_sd import ModelSource
    from textinv.models.generation import ImageGenerator
    from textinv.models.speed import SpeedSettings, apply_speed

    ev = EvalConfig()
    frozen = ModelSource(model).load()
    frozen.to(device)
    if dtype is not None:
        keep = frozen.family.keep_vae_fp32
        for m in frozen.modules:
            if not (keep and m is frozen.vae):
                m.to(getattr(torch, dtype))
    apply_speed(frozen, SpeedSettings(compile, backend))
    gen = ImageGenerator.from_frozen(frozen, scheduler=ev.scheduler)
    kw = dict(seed=ev.seed, guidance_scale=ev.guidance_scale, negative_prompt=ev.negative_prompt,
              height=resolution, width=resolution, output_type="np")
    prompts = ["a photo of a toy"]
    with torch.inference_mode():
        # warm-up at both batch sizes (allocator, kernels, the cached prompt encoding; compiled: the compile)
        _sync(device)
        t0 = time.perf_counter()
        if "single" in modes:
            gen.generate(prompts, 1, steps=1, batch_size=1, **kw)
        gen.generate(prompts, min(gen_batch, gen_images), steps=1, batch_size=gen_batch, **kw)
        _sync(device)
        warmup = time.perf_counter() - t0
        out, seconds = {}, {}
        for mode, batch in (("batched", gen_batch), ("single", 1)):
            if mode not in modes:
                continue
            _sync(device)
            t0 = time.perf_counter()
            out[mode] = gen.generate(prompts, gen_images, steps=gen_steps, batch_size=batch, **kw)[0]
            _sync(device)
            seconds[mode] = time.perf_counter() - t0
        # the VAE decode per image does not scale with sampler steps: time it alone for the projection
        f = gen.pipe.vae_scale_factor
        decode = {}
        for mode, batch in (("batched", gen_batch), ("single", 1)):
            if mode not in modes:
                continue
            z = torch.randn(batch, frozen.vae.config.latent_channels, resolution // f, resolution // f,
                            device=device, dtype=frozen.vae.dtype)
            frozen.vae.decode(z)
            _sync(device)
            t0 = time.perf_counter()
            frozen.vae.decode(z)
            _sync(device)
            decode[mode] = (time.perf_counter() - t0) / batch
    diff = (max(float(np.abs(a - b).max()) for a, b in zip(out["batched"], out["single"]))
            if len(out) == 2 else None)
    return {"seconds": seconds, "decode_s_per_image": decode, "images": gen_images, "gen_steps": gen_steps,
            "gen_batch": gen_batch, "max_pixel_diff": diff, "warmup_s": warmup,
            "first_image": out["batched"][0] if "batched" in out else None}  # popped before the JSON line


COST_CONCEPT = "deku_tree"
# "before": what a default run evaluated until issue 11 (the full protocol at every evaluation)
BEFORE = ("eval.light.enabled=false", "callbacks.validation_loss.enabled=false")


def eval_cost_report(train_s_per_step: float, s_per_image_step: float, decode_s_per_image: float) -> dict:
    """A default concept=deku_tree run's training and evaluation compute, before and after, from the
    measured per-step and per-image costs."""
    from textinv.evaluation.plan import eval_compute_seconds, make_plan

    out = {}
    for name, overrides in (("before", BEFORE), ("after", ())):
        plan = make_plan(_compose(f"concept={COST_CONCEPT}", "run_dir=/tmp/unused", *overrides))
        train = plan["train_micro_steps"] * train_s_per_step
        ev = eval_compute_seconds(plan, s_per_image_step, decode_s_per_image)
        out[name] = {"train_micro_steps": plan["train_micro_steps"], "evaluations": len(plan["evaluations"]),
                     "eval_images": plan["eval_images"], "eval_unet_forwards": plan["eval_unet_forwards"],
                     "validation_unet_forwards": plan["validation_unet_forwards"],
                     "train_s": round(train), "eval_s": round(ev), "eval_over_train": round(ev / train, 3),
                     "eval_share_of_run": round(ev / (ev + train), 3)}
    return out


def peer(model: str, resolution: int, steps: int, device: str, script: str | None = None,
         mixed_precision: str = "no") -> dict:
    """diffusers' textual_inversion_sdxl.py on the same random weights and images (textinv.bench.peer)."""
    from textinv.bench.peer import peer_script, peer_steps
    from textinv.data.datamodule import ConceptDataModule
    from hydra.utils import instantiate

    path = peer_script(script)
    if path is None or not path.is_file():
        raise SystemExit(f"no peer script at {path}: pass --peer-script PATH (diffusers' "
                         "examples/textual_inversion/textual_inversion_sdxl.py) or set TEXTINV_PEER_SCRIPT")
    concept = instantiate(_compose("concept=demo").concept, _convert_="all")
    ConceptDataModule(concept, resolution=resolution).load()  # draws the demo images on first use
    return peer_steps(path, model, resolution, steps, concept.folder.resolve(), concept.placeholder,
                      concept.initializer, mixed_precision=mixed_precision)


PARTS = {"floor": floor, "train": train_steps, "train_compiled": functools.partial(train_steps, compile=True),
         "train_ddp": train_steps,
         "train_hn": functools.partial(train_steps, method="hypernetwork"),
         "generate": generation, "generate_compiled": functools.partial(generation, compile=True), "peer": peer}
# peer: on request (it needs the script), e.g. --model sdxl_arch --parts floor,train,peer
DEFAULT_PARTS = "floor,train,train_compiled,train_hn,generate,generate_compiled"


def call_part(part: str, args) -> dict:
    if part in ("generate", "generate_compiled"):
        compiled = part == "generate_compiled"
        modes = ("batched",) if compiled else tuple(args.gen_modes.split(","))
        out = generation(args.model, args.resolution, args.device, args.gen_steps, args.gen_images, args.gen_batch,
                         compile=compiled, modes=modes, backend=args.compile_backend, dtype=args.gen_dtype)
        first = out.pop("first_image", None)
        if args.save_first and first is not None:
            import numpy as np

            np.save(args.save_first, np.asarray(first, dtype=np.float32))
        return out
    if part == "peer":
        return peer(args.model, args.resolution, args.steps, args.device, args.peer_script,
                    mixed_precision="bf16" if args.precision.startswith("bf16") else "no")
    if part == "train_ddp":  # 2 ranks (Lightning re-runs this command for rank 1): gloo on CPU, NCCL on GPUs
        return train_steps(args.model, args.resolution, args.steps, args.device, precision=args.precision,
                           extra=("trainer=ddp", "trainer.devices=2"))
    if part == "floor":
        return floor(args.model, args.resolution, args.steps, args.device)
    extra = (f"module.compile_backend={args.compile_backend}",) if part == "train_compiled" else ()
    return PARTS[part](args.model, args.resolution, args.steps, args.device, extra=extra, precision=args.precision)


def run_part(part: str, args, save_first: str | None = None) -> dict:
    cmd = [sys.executable, "-m", "textinv.bench", "--part", part, "--model", args.model, "--resolution",
           str(args.resolution), "--steps", str(args.steps), "--device", args.device,
           "--gen-steps", str(args.gen_steps), "--gen-images", str(args.gen_images), "--gen-batch", str(args.gen_batch),
           "--compile-backend", args.compile_backend, "--gen-modes", args.gen_modes, "--precision", str(args.precision)]
    if args.gen_dtype:
        cmd += ["--gen-dtype", args.gen_dtype]
    if save_first:
        cmd += ["--save-first", save_first]
    if args.peer_script:
        cmd += ["--peer-script", str(args.peer_script)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    if out.returncode != 0:
        why = " (killed: out of memory?)" if out.returncode in (-9, 137) else ""
        raise SystemExit(f"bench part {part} failed with exit status {out.returncode}{why}:\n{out.stderr[-3000:]}")
    return json.loads([ln for ln in out.stdout.strip().splitlines() if ln.startswith("{")][-1])


EVAL_STEPS = 50  # the full protocol's sampler steps (EvalConfig.sampler_steps): what projections aim at


def per_image_costs(g: dict, mode: str = "batched") -> tuple[float, float, float]:
    """A generation part's seconds per image, per image and sampler step, and per VAE decode."""
    per_image = g["seconds"][mode] / g["images"]
    decode = min(g["decode_s_per_image"][mode], per_image)
    return per_image, (per_image - decode) / g["gen_steps"], decode


def projected_s_per_image(g: dict, steps: int = EVAL_STEPS, mode: str = "batched") -> float:
    """Seconds per image at `steps` sampler steps: the measured per-step cost scaled, plus one decode."""
    _, per_step, decode = per_image_costs(g, mode)
    return per_step * steps + decode


def generation_report(g: dict, eval_steps: int = EVAL_STEPS) -> dict:
    """images/s both ways, their ratio, the per-step cost and a projection to the eval default of 50 steps."""
    rep = {"gen_steps": g["gen_steps"], "gen_images": g["images"], "gen_batch": g["gen_batch"],
           "gen_max_pixel_diff": g["max_pixel_diff"]}
    for mode in ("batched", "single"):
        if mode not in g["seconds"]:
            continue
        per_image, per_step, decode = per_image_costs(g, mode)
        rep[f"gen_{mode}_images_per_s"] = round(1 / per_image, 4)
        rep[f"gen_{mode}_s_per_image"] = round(per_image, 3)
        rep[f"gen_{mode}_s_per_image_step"] = round(per_step, 4)
        rep[f"gen_{mode}_decode_s_per_image"] = round(decode, 3)
        rep[f"gen_{mode}_images_per_s_at_{eval_steps}_steps"] = round(1 / projected_s_per_image(g, eval_steps, mode), 4)
    if "single" not in g["seconds"]:
        return rep
    rep["gen_speedup"] = round(g["seconds"]["single"] / g["seconds"]["batched"], 3)
    rep[f"gen_speedup_at_{eval_steps}_steps"] = round(rep[f"gen_batched_images_per_s_at_{eval_steps}_steps"]
                                                      / rep[f"gen_single_images_per_s_at_{eval_steps}_steps"], 3)
    return rep


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def run_alternating(parts: list[str], args) -> tuple[dict, dict, list]:
    """Every part once per repeat, each in its own process, the order rotated each repeat (every part takes every
    position: a drift of the machine's speed hits all contenders alike). Compiled and eager generation save their
    first image, compared here (the numerics of compile=true in sampling)."""
    runs: dict[str, list[dict]] = {p: [] for p in parts}
    load: dict[str, list] = {p: [] for p in parts}
    diffs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            shift = r % len(parts)
            for part in parts[shift:] + parts[:shift]:
                save = str(Path(tmp) / f"{part}-{r}.npy") if part.startswith("generate") else None
                runs[part].append(run_part(part, args, save))
                load[part].append(_load())
                print(f"  repeat {r + 1}/{args.repeats} {part}: done (load average {load[part][-1]})", flush=True)
            files = [Path(tmp) / f"{p}-{r}.npy" for p in ("generate", "generate_compiled")]
            if all(f.is_file() for f in files):
                import numpy as np

                diffs.append(float(np.abs(np.load(files[0]) - np.load(files[1])).max()))
    return runs, load, diffs


def merge_repeats(part: str, rs: list[dict]) -> dict:
    """One part's repeats as one result: training parts' step times concatenated (their median is over all steps),
    generation's seconds the median over repeats; peak memory the highest."""
    out = dict(rs[-1])
    out["peak_memory_gb"] = max(r["peak_memory_gb"] for r in rs)
    if isinstance(rs[0].get("seconds"), list):
        out["seconds"] = [x for r in rs for x in r["seconds"]]
    elif isinstance(rs[0].get("seconds"), dict):
        out["seconds"] = {m: statistics.median(r["seconds"][m] for r in rs) for m in rs[0]["seconds"]}
        out["decode_s_per_image"] = {m: statistics.median(r["decode_s_per_image"][m] for r in rs)
                                     for m in rs[0]["decode_s_per_image"]}
    return out


def _spread(values: list[float], digits: int = 3) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def _fmt(sp: dict, unit: str = "") -> str:
    return f"{sp['median']}{unit} (range {sp['min']}-{sp['max']}{unit}, {sp['n']} repeats)"


def repeat_summary(runs: dict, args, pixel_diffs: list[float]) -> dict:
    """Medians over the alternating repeats with their spread (min-max of the per-repeat figures), and the ratios
    paired by repeat (taken from neighbouring processes: the machine's drift cancels)."""
    out: dict = {"repeats": args.repeats}
    per: dict[str, list[float]] = {}
    for part, rs in runs.items():
        if isinstance(rs[0].get("seconds"), list):
            per[part] = [statistics.median(r["seconds"]) for r in rs]
        elif part.startswith("generate"):
            per[part] = [r["seconds"]["batched"] / r["images"] for r in rs]  # s per image, batched
    if not per:
        return out
    print(f"medians over {args.repeats} alternating repeats (each part in its own process; range = the per-repeat "
          "figures):")
    for part, values in per.items():
        unit = " s/image" if part.startswith("generate") else " s/step"
        out[f"{part}_repeats"] = _spread(values, 4)
        print(f"  {part + ':':20s} {_fmt(out[f'{part}_repeats'], unit)}")

    def paired(a: str, b: str, key: str, label: str, target: float | None = None) -> None:
        if a in per and b in per:
            ratios = [x / y for x, y in zip(per[a], per[b])]
            out[key] = _spread(ratios)
            met = "" if target is None else (" (target >= %.2f: %s)" % (target, "met" if out[key]["median"] >= target
                                                                          else "NOT met"))
            print(f"  {label}: {_fmt(out[key], 'x')}{met}")

    paired("train", "floor", "train_over_floor", "eager training step / floor")
    paired("train_compiled", "floor", "train_compiled_over_floor", "compiled training step / floor")
    paired("train", "train_compiled", "compile_speedup", "compile=true speed-up of the training step", 1.25)
    paired("peer", "train_compiled", "compiled_vs_peer", "compile=true vs the peer script", 2.0)
    paired("peer", "train", "eager_vs_peer", "eager vs the peer script")
    paired("generate", "generate_compiled", "gen_compile_speedup", "compile=true speed-up of evaluation generation "
           "(batched, s per image)", 1.3)
    compiled = [r.get("compile") for r in runs.get("train_compiled", []) if r.get("compile")]
    if compiled and "train" in per and "train_compiled" in per:
        compile_s = _spread([c["compile_s"] for c in compiled], 1)
        eager, fast = statistics.median(per["train"]), statistics.median(per["train_compiled"])
        gain = eager - fast
        out["compile_s"] = compile_s
        out["break_even_step"] = int(-(-compile_s["median"] // gain)) if gain > 0 else None
        print(f"  compile time (first compiled micro-step minus a compiled one, timed by the module): "
              f"{_fmt(compile_s, ' s')}; pays off after step "
              f"{out['break_even_step'] if out['break_even_step'] else 'never (not faster)'} "
              f"({eager:.3f} -> {fast:.3f} s/step)")
    gens = {p: [r["warmup_s"] for r in runs[p]] for p in ("generate", "generate_compiled") if p in runs}
    if len(gens) == 2:
        # at evaluation's steps the sampler's share grows and the decode's shrinks: each part's own costs projected
        at_eval = {p: [projected_s_per_image(r) for r in runs[p]] for p in gens}
        key = f"gen_compile_speedup_at_{EVAL_STEPS}_steps"
        out[key] = _spread([e / c for e, c in zip(at_eval["generate"], at_eval["generate_compiled"])])
        print(f"  the same projected to {EVAL_STEPS} sampler steps (each part's s per image-step x {EVAL_STEPS} + its "
              f"decode): {_fmt(out[key], 'x')}")
        extra = [c - e for c, e in zip(gens["generate_compiled"], gens["generate"])]
        out["gen_compile_s"] = _spread(extra, 1)
        print(f"  generation compile time (compiled warm-up minus eager warm-up): {_fmt(out['gen_compile_s'], ' s')}")
    if pixel_diffs:
        out["gen_compiled_max_pixel_diff"] = max(pixel_diffs)
        print(f"  compiled vs eager generation, first image: max pixel difference {max(pixel_diffs):.2e} (0-1 scale)")
    return out


def main(argv: list[str] | None = None) -> None:
    p = Parser(prog="python -m textinv bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd15_arch")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="training steps to time")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gen-steps", type=int, help="sampler steps for the generation benchmark (default: 50 on GPU, "
                   "5 on CPU; eval uses 50)")
    p.add_argument("--gen-images", type=int, help="images generated each way (default: 2 x --gen-batch on GPU, "
                   "--gen-batch on CPU)")
    p.add_argument("--gen-batch", type=int, help="images per pipeline call when batched (default: eval.batch_size)")
    p.add_argument("--parts", default=DEFAULT_PARTS, help=f"comma-separated subset of {','.join(PARTS)} "
                   f"(default {DEFAULT_PARTS})")
    p.add_argument("--peer-script", help="diffusers' textual_inversion_sdxl.py for the peer part "
                   "(default: $TEXTINV_PEER_SCRIPT)")
    p.add_argument("--part", choices=list(PARTS))
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats: every part runs once per repeat, in "
                   "a rotated order, each in its own process; figures are medians over repeats with their spread")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the *_compiled parts "
                   "(inductor; aot_eager only checks the plumbing)")
    p.add_argument("--save-first", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="32", help="trainer.precision of the training parts (bf16-mixed: bf16 "
                   "frozen weights on a GPU)")
    p.add_argument("--gen-modes", default="batched,single", help=argparse.SUPPRESS)
    p.add_argument("--gen-dtype", default=None, help="frozen weights' dtype for generation (e.g. bfloat16)")
    args = p.parse_args(argv)
    from textinv.evaluation.evaluator import EvalConfig

    args.gen_batch = args.gen_batch or EvalConfig().batch_size
    args.gen_steps = args.gen_steps or (50 if args.device == "cuda" else 5)
    args.gen_images = args.gen_images or (2 * args.gen_batch if args.device == "cuda" else args.gen_batch)
    if min(args.gen_steps, args.gen_images, args.gen_batch, args.steps, args.repeats) < 1:
        raise SystemExit("error: --steps, --gen-steps, --gen-images, --gen-batch and --repeats must be >= 1")
    if args.part:  # child process: one measurement, JSON on the last stdout line
        result = call_part(args.part, args)
        result["peak_memory_gb"] = peak_memory_gb(args.device)
        if int(os.environ.get("LOCAL_RANK") or 0) == 0:  # a DDP part's rank 1 runs this too: rank 0 answers
            print(json.dumps(result), flush=True)
        return
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown or not parts:
        raise SystemExit(f"error: --parts {args.parts!r}: choose from {','.join(PARTS)}")
    if "peer" in parts:
        from textinv.bench.peer import peer_script

        script = peer_script(args.peer_script)
        if script is None or not script.is_file():
            print(f"peer: skipped, no script at {script} (pass --peer-script or set TEXTINV_PEER_SCRIPT to diffusers' "
                  "examples/textual_inversion/textual_inversion_sdxl.py)")
            parts.remove("peer")
        else:
            args.peer_script = str(script)
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    runs, load_during, pixel_diffs = run_alternating(parts, args)
    results = {part: merge_repeats(part, rs) for part, rs in runs.items()}
    report = {"model": args.model, "resolution": args.resolution, "device": args.device,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "load_avg_1min_before": load_before, "load_avg_1min_after_each_part": load_during,
              **{f"{part}_seconds": [round(x, 3) for x in r["seconds"]] for part, r in results.items()
                 if isinstance(r.get("seconds"), list)}}
    for part in ("floor", "train", "train_hn", "peer"):  # under load the fastest step is the least disturbed one
        if part in results:
            report[f"{part}_s_per_step_min"] = round(min(results[part]["seconds"]), 3)
    if "floor" in results and "train" in results:
        f, t = (statistics.median(results[k]["seconds"]) for k in ("floor", "train"))
        report.update({
            "batch": 1, "floor_s_per_step": round(f, 3), "train_s_per_step": round(t, 3), "ratio": round(t / f, 3),
            "floor_peak_gb": round(results["floor"]["peak_memory_gb"], 2),
            "train_peak_gb": round(results["train"]["peak_memory_gb"], 2),
            "optimizer_state_bytes": results["train"]["optimizer_state_bytes"],
        })
        print(f"training step, {args.model} at {args.resolution} px, batch 1, {args.device}:")
        print(f"  floor (text encoder + UNet fwd/bwd): {f:.3f} s/step, peak {report['floor_peak_gb']} GiB")
        print(f"  textinv training step:               {t:.3f} s/step, peak {report['train_peak_gb']} GiB")
        report["ratio_min"] = round(report["train_s_per_step_min"] / report["floor_s_per_step_min"], 3)
        print(f"  ratio {t / f:.3f} (target <= 1.15; fastest steps {report['ratio_min']:.3f}); optimizer state "
              f"{report['optimizer_state_bytes']} bytes")
    if "floor" in results and "train_hn" in results:
        f, h = (statistics.median(results[k]["seconds"]) for k in ("floor", "train_hn"))
        report.update(train_hn_s_per_step=round(h, 3), train_hn_ratio=round(h / f, 3),
                      train_hn_peak_gb=round(results["train_hn"]["peak_memory_gb"], 2),
                      train_hn_optimizer_state_bytes=results["train_hn"]["optimizer_state_bytes"])
        print(f"  hypernetwork training step:          {h:.3f} s/step, peak {report['train_hn_peak_gb']} GiB, ratio "
              f"{h / f:.3f} to the floor (it adds MLPs on every attention's keys and values); optimizer state "
              f"{report['train_hn_optimizer_state_bytes']} bytes")
    if not ("floor" in results and "train" in results):
        for part in ("floor", "train"):
            if part in results:
                report[f"{part}_s_per_step"] = round(statistics.median(results[part]["seconds"]), 3)
                report[f"{part}_peak_gb"] = round(results[part]["peak_memory_gb"], 2)
                print(f"{part}: {report[f'{part}_s_per_step']:.3f} s/step, peak {report[f'{part}_peak_gb']} GiB")
    if "peer" in results:
        p = statistics.median(results["peer"]["seconds"])
        report.update(peer_s_per_step=round(p, 3), peer_peak_gb=round(results["peer"]["peak_memory_gb"], 2),
                      peer_script=results["peer"]["script"])
        peer_name = Path(results["peer"]["script"]).name
        print(f"  diffusers' {peer_name}:  {p:.3f} s/step, peak {report['peer_peak_gb']} GiB "
              f"({results['peer']['script']})")
        if "train" in results:
            t = statistics.median(results["train"]["seconds"])
            report["speedup_vs_peer"] = round(p / t, 3)
            report["speedup_vs_peer_min"] = round(report["peer_s_per_step_min"] / report["train_s_per_step_min"], 3)
            print(f"  textinv is {p / t:.3f}x faster than the peer script (target >= 1.3); fastest steps: "
                  f"{report['speedup_vs_peer_min']:.3f}x")
    if "generate" in results:
        g = generation_report(results["generate"])
        report.update(g, gen_peak_gb=round(results["generate"]["peak_memory_gb"], 2))
        n, b, st = g["gen_images"], g["gen_batch"], g["gen_steps"]
        print(f"evaluation generation, {args.model} at {args.resolution} px, DDIM {st} steps, guidance 5.0, "
              f"{n} images each way, {args.device}:")
        for mode, what in (("batched", f"{b} images per pipeline call"), ("single", "1 image per pipeline call")):
            print(f"  {what + ':':28s} {g[f'gen_{mode}_images_per_s']:.4f} images/s "
                  f"({g[f'gen_{mode}_s_per_image']:.2f} s/image; {g[f'gen_{mode}_s_per_image_step']:.3f} s per image "
                  f"per step + {g[f'gen_{mode}_decode_s_per_image']:.3f} s decode)")
        print(f"  batched / single: {g['gen_speedup']:.3f}x (target >= 1.3 on CPU); projected to 50 steps: "
              f"{g['gen_batched_images_per_s_at_50_steps']:.4f} vs {g['gen_single_images_per_s_at_50_steps']:.4f} "
              f"images/s, {g['gen_speedup_at_50_steps']:.3f}x; same images either way (max pixel difference "
              f"{g['gen_max_pixel_diff']:.2e})")
    if "train" in results and "generate" in results:
        c = eval_cost_report(report["train_s_per_step"], report["gen_batched_s_per_image_step"],
                             report["gen_batched_decode_s_per_image"])
        report["eval_cost"] = c
        b, a = c["before"], c["after"]
        print(f"evaluation cost of a default concept={COST_CONCEPT} run (plan x measured costs above), "
              f"before (full protocol at every evaluation) | after (light during training, full at the end):")
        rows = [("training micro-steps", "train_micro_steps", "{:,}"), ("evaluations", "evaluations", "{}"),
                ("images generated", "eval_images", "{:,}"), ("eval UNet forwards", "eval_unet_forwards", "{:,}"),
                ("validation-loss UNet forwards", "validation_unet_forwards", "{:,}"),
                ("training compute, s", "train_s", "{:,}"), ("evaluation compute, s", "eval_s", "{:,}"),
                ("evaluation / training", "eval_over_train", "{:.3f}x"),
                ("evaluation share of the run", "eval_share_of_run", "{:.0%}")]
        for label, key, f in rows:
            print(f"  {label + ':':32s} {f.format(b[key]):>12s} | {f.format(a[key]):>12s}")
        print(f"  target: evaluation <= 1.2x training after ({'met' if a['eval_over_train'] <= 1.2 else 'NOT met'})")
    report.update(repeat_summary(runs, args, pixel_diffs))
    if load_before is not None and load_before > 0.5:
        print(f"note: the 1-minute load average was {load_before} on {os.cpu_count()} cores before the benchmark "
              "started: other jobs share this machine and the times may be inflated")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
