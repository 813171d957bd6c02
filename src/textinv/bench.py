"""`make bench`: seconds per training step and peak memory on the real SD 1.5 architecture.

Compared with the floor, one forward and backward of the frozen text encoder and UNet alone, the
training step adds only what textual inversion needs (embedding swap, noise, loss, a 768-float AdamW
update). Each measurement runs in its own process so peak memory is its own.
Usage: python -m textinv.bench [--resolution 256] [--steps 6] [--model sd15_arch]
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[2]


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB


def floor(model: str, resolution: int, steps: int, device: str) -> dict:
    """Text encoder + UNet forward and backward, gradients only as far as the token embeddings."""
    from textinv.frozen_sd import ModelSource

    frozen = ModelSource(model).load()
    te, unet = frozen.text_encoder.to(device), frozen.unet.to(device)
    te.get_input_embeddings().register_forward_hook(lambda m, i, out: out.detach().requires_grad_())
    ids = frozen.tokenizer(["a photo of a toy"], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
    f = 2 ** (len(frozen.vae.config.block_out_channels) - 1)
    latents = torch.randn(1, 4, resolution // f, resolution // f, device=device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        pred = unet(latents, torch.tensor([500], device=device), te(ids)[0]).sample
        torch.nn.functional.mse_loss(pred, latents).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"seconds": times}


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


def train_steps(model: str, resolution: int, steps: int, device: str) -> dict:
    from hydra.utils import instantiate

    from textinv.run import build_trainer, prepare

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _compose(f"model={model}", "concept=demo", f"data.resolution={resolution}", "data.batch_size=1",
                       "trainer.accumulate_grad_batches=1", f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
                       f"steps={steps + 1}", "logger=csv", f"run_dir={tmp}", "~callbacks.model_checkpoint",
                       "~callbacks.progress_bar", "callbacks.embedding_writer.every_n_steps=0",
                       "+trainer.enable_checkpointing=false")
        _, _, concept, source, datamodule = prepare(cfg)
        module = instantiate(cfg.module, _convert_="all")(frozen=source.load(), placeholder=concept.placeholder,
                                                          initializer=cfg.init, seed=cfg.seed)
        trainer = build_trainer(cfg)
        timer = _StepTimer()
        trainer.callbacks.append(timer.callback)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        marks = [start] + timer.marks
        optimizer_state = sum(t.numel() * t.element_size() for s in trainer.optimizers[0].state.values()
                              for t in s.values() if torch.is_tensor(t))
    # the first step includes the latent cache and warm-up: leave it out
    return {"seconds": [b - a for a, b in zip(marks[1:], marks[2:])], "optimizer_state_bytes": optimizer_state}


PARTS = {"floor": floor, "train": train_steps}


def run_part(part: str, args) -> dict:
    cmd = [sys.executable, "-m", "textinv.bench", "--part", part, "--model", args.model, "--resolution",
           str(args.resolution), "--steps", str(args.steps), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"bench part {part} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sd15_arch")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--part", choices=list(PARTS))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    if args.part:  # child process: one measurement, JSON on the last stdout line
        result = PARTS[args.part](args.model, args.resolution, args.steps, args.device)
        result["peak_memory_gb"] = peak_memory_gb(args.device)
        print(json.dumps(result))
        return
    results = {part: run_part(part, args) for part in PARTS}
    f, t = (statistics.median(results[k]["seconds"]) for k in ("floor", "train"))
    report = {
        "model": args.model, "resolution": args.resolution, "batch": 1, "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "floor_s_per_step": round(f, 3), "train_s_per_step": round(t, 3), "ratio": round(t / f, 3),
        "floor_peak_gb": round(results["floor"]["peak_memory_gb"], 2),
        "train_peak_gb": round(results["train"]["peak_memory_gb"], 2),
        "optimizer_state_bytes": results["train"]["optimizer_state_bytes"],
    }
    print(f"training step, {args.model} at {args.resolution} px, batch 1, {args.device}:")
    print(f"  floor (text encoder + UNet fwd/bwd): {f:.3f} s/step, peak {report['floor_peak_gb']} GiB")
    print(f"  textinv training step:               {t:.3f} s/step, peak {report['train_peak_gb']} GiB")
    print(f"  ratio {t / f:.3f} (target <= 1.15); optimizer state {report['optimizer_state_bytes']} bytes")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
