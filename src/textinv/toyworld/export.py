"""Write the pretrained world in the layouts real weights use, with its recipe, curves and checksums.

out/
  sd/          a diffusers Stable Diffusion folder (model_index.json, tokenizer/, text_encoder/, vae/,
               unet/, scheduler/): `model.path=` or `model=toy` loads it like SD 1.5
  clip/        an open_clip `local-dir:` model (open_clip_config.json + open_clip_model.safetensors)
  classifier/  the attribute classifier (model.safetensors + config.json)
  curves/      every stage's loss curve (CSV)
  recipe.json, report.json, SHA256SUMS
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file

from textinv.utils.atomic import atomic_write_text

log = logging.getLogger(__name__)


def export_sd(folder: Path, vae, tokenizer, text_encoder, unet) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from textinv.models.frozen_sd import SD_SCHEDULE

    # Real SD 1.x folders ship a PNDM scheduler config over the same training schedule.
    schedule = {k: v for k, v in SD_SCHEDULE.items() if k != "clip_sample"}
    scheduler = PNDMScheduler(**schedule, skip_prk_steps=True, set_alpha_to_one=False)
    # as in SD 1.5's scheduler_config.json: DDPM/DDIM built from it must not clip latents to [-1, 1]
    scheduler.register_to_config(clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)


def export_clip(folder: Path, model) -> None:
    from textinv.toyworld.models import CLIP

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "open_clip_config.json", json.dumps(CLIP, indent=2))
    # fp16 on disk halves the size; open_clip copies it into its fp32 parameters
    state = {k: v.detach().half().contiguous() if v.dtype.is_floating_point else v.contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))


def export_classifier(folder: Path, model) -> None:
    from textinv.toyworld.models import HEADS

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    atomic_write_text(folder / "config.json", json.dumps({"heads": {k: list(v) for k, v in HEADS.items()}}, indent=2))


def write_checksums(out: Path) -> None:
    lines = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS"):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(out).as_posix()}")
    atomic_write_text(out / "SHA256SUMS", "\n".join(lines) + "\n")


def export_all(out: Path, work: Path, recipe, vae, tokenizer, text_encoder, unet, clip, classifier) -> None:
    from textinv.toyworld.report import world_report

    out.mkdir(parents=True, exist_ok=True)
    export_sd(out / "sd", vae, tokenizer, text_encoder, unet)
    export_clip(out / "clip", clip)
    export_classifier(out / "classifier", classifier)
    shutil.copytree(work / "curves", out / "curves", dirs_exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps(asdict(recipe), indent=2))
    report = world_report(out, recipe)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    write_checksums(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info("exported the world to %s (%.1f MB)", out, size / 1e6)
