"""The peer in `make bench`: diffusers' own `examples/textual_inversion/textual_inversion_sdxl.py` (SDXL
architectures) or `textual_inversion.py` (SD 1.x architectures: `make gpu-check --peer-script-sd`), timed
per optimizer step on the same random weights, images, resolution, batch 1 and number of steps.

The script is not part of this project (nor copied into it): pass its path with --peer-script or
$TEXTINV_PEER_SCRIPT (from the diffusers release matching the installed one; it needs `accelerate` and
`tensorboard`, the `bench` extra). The random-weight model is saved once with `save_pretrained` under
the cache (`<cache>/bench/<model>-seed<seed>`, ~14 GiB for sdxl_arch) and reused.
Step times: a global optimizer-step hook records a time stamp after every step; the first interval
(warm-up, first data) is left out, like the textinv step timer leaves out the first step.
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile
import time
from pathlib import Path

import torch

ENV_SCRIPT = "TEXTINV_PEER_SCRIPT"


def peer_script(path: str | None) -> Path | None:
    found = path or os.environ.get(ENV_SCRIPT)
    return Path(found).expanduser() if found else None


def saved_model(model: str, seed: int = 0) -> Path:
    """The random-weight model as a diffusers folder (what the peer loads with from_pretrained)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from textinv.utils.cache import cache_dir
    from textinv.models.frozen_sd import ModelSource

    folder = cache_dir("bench") / f"{model}-seed{seed}"
    if (folder / "model_index.json").is_file():
        return folder
    frozen = ModelSource(model, seed=seed).load()
    if frozen.family_name != "sdxl":  # SD 1.x: diffusers' textual_inversion.py
        pipe = StableDiffusionPipeline(vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer,
                                       unet=frozen.unet, scheduler=frozen.noise_scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(vae=frozen.vae, text_encoder=frozen.text_encoder,
                                         text_encoder_2=frozen.text_encoder_2, tokenizer=frozen.tokenizer,
                                         tokenizer_2=frozen.tokenizer_2, unet=frozen.unet,
                                         scheduler=frozen.noise_scheduler, add_watermarker=False)
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    pipe.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")  # small shards: bounded memory
    os.replace(tmp, folder)
    return folder


def peer_steps(script: Path, model: str, resolution: int, steps: int, images: Path, placeholder: str,
               initializer: str, mixed_precision: str = "no") -> dict:
    """Runs the script in this process (so its peak memory is this process's) for steps + 1 steps."""
    # saved by a child process: building the model must not count in this process's peak memory
    import subprocess

    subprocess.run([sys.executable, "-c", f"from textinv.bench.peer import saved_model; saved_model({model!r})"],
                   check=True)
    folder = saved_model(model)
    marks: list[float] = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *a, **k: marks.append(time.perf_counter()))
    with tempfile.TemporaryDirectory() as out:
        sys.argv = [str(script), f"--pretrained_model_name_or_path={folder}", f"--train_data_dir={images}",
                    f"--placeholder_token={placeholder}", f"--initializer_token={initializer}",
                    f"--resolution={resolution}", "--train_batch_size=1", "--gradient_accumulation_steps=1",
                    f"--max_train_steps={steps + 1}", "--learning_rate=5e-4", "--lr_warmup_steps=0",
                    "--dataloader_num_workers=0", f"--mixed_precision={mixed_precision}", "--seed=0",
                    f"--output_dir={out}",
                    "--save_steps=1000000", "--checkpointing_steps=1000000", "--num_vectors=1"]
        runpy.run_path(str(script), run_name="__main__")
    return {"seconds": [b - a for a, b in zip(marks, marks[1:])], "script": str(script)}
