"""What a run will spend, from its config alone (no weights, no images): `python train.py ... plan=true`.

One JSON line per run (per sweep point under -m):
  train_micro_steps   forward/backward passes per device (steps x accumulation)
  train_unet_forwards images through the UNet for training (micro-steps x batch x devices)
  evaluations         [{step, protocol, images, sampler_steps, unet_forwards}], in the order they run
  eval_unet_forwards  their sum; a UNet forward is one image through the UNet once (guidance counts two)
  validation_unet_forwards  the fixed-batch validation loss (textinv.training.validation_loss): checks x batch
The evaluations are textinv.evaluation.schedule's, the rules the training callback follows step by step.
An early stop on the validation loss can only make a run cheaper than its plan.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from textinv.evaluation.evaluator import EvalConfig, evaluation_prompts
from textinv.evaluation.schedule import Protocol, evaluation_schedule


def guided(guidance_scale: float) -> bool:
    """diffusers runs the unconditional half only when guidance is on (scale > 1)."""
    return guidance_scale > 1.0


def evaluation_entry(step: int, protocol: Protocol, num_prompts: int, guidance_scale: float) -> dict:
    images = num_prompts * protocol.num_images
    return {"step": step, "protocol": protocol.name, "images": images, "sampler_steps": protocol.sampler_steps,
            "scheduler": protocol.scheduler,
            "unet_forwards": images * protocol.sampler_steps * (2 if guided(guidance_scale) else 1)}


def make_plan(cfg: DictConfig) -> dict:
    ev: EvalConfig = instantiate(cfg.eval, _convert_="all")
    concept = instantiate(cfg.concept, _convert_="all")
    steps, baseline = int(cfg.steps), bool(cfg.baseline)
    accum = int(cfg.trainer.get("accumulate_grad_batches") or 1)
    devices = cfg.trainer.get("devices")
    world = (devices if isinstance(devices, int) else len(devices) if OmegaConf.is_list(devices) else 1)
    world *= int(cfg.trainer.get("num_nodes") or 1)
    batch = int(cfg.data.batch_size)
    num_prompts = 1 + len(evaluation_prompts(ev, concept.kind, concept.prompts)[1]) if ev.enabled else 0
    evaluations = [evaluation_entry(step, p, num_prompts, ev.guidance_scale)
                   for step, protocols in evaluation_schedule(ev, steps, baseline) for p in protocols]
    micro = 0 if baseline else steps * accum
    val = (cfg.get("callbacks") or {}).get("validation_loss")
    val_forwards = 0
    if val and not baseline and val.get("enabled", True) and int(val.every_n_steps) > 0:
        checks = 1 + steps // int(val.every_n_steps)  # the start, then every K steps
        val_forwards = checks * int(val.batch_size)
    return {
        "concept": concept.name, "baseline": baseline, "steps": 0 if baseline else steps,
        "train_micro_steps": micro, "train_unet_forwards": micro * batch * world,
        "evaluations": evaluations, "eval_unet_forwards": sum(e["unet_forwards"] for e in evaluations),
        "eval_images": sum(e["images"] for e in evaluations),
        "validation_unet_forwards": val_forwards,
        "protocols": {p.name: {"num_images": p.num_images, "sampler_steps": p.sampler_steps, "scheduler": p.scheduler}
                      for p in ([ev.full] + ([ev.light_protocol] if ev.light_protocol else []))},
    }


def eval_compute_seconds(plan: dict, s_per_image_step: float, decode_s_per_image: float,
                         s_per_unet_forward: float | None = None) -> float:
    """Evaluation seconds of a plan from measured costs: every image costs its sampler steps
    (`s_per_image_step`: one guided step of one image) and one VAE decode; the validation loss costs
    UNet forwards (`s_per_unet_forward`, by default half a guided image step)."""
    per_forward = s_per_unet_forward if s_per_unet_forward is not None else s_per_image_step / 2
    gen = sum(e["images"] * (e["sampler_steps"] * s_per_image_step + decode_s_per_image) for e in plan["evaluations"])
    return gen + plan["validation_unet_forwards"] * per_forward
