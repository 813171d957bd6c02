"""Honest resume: a checkpoint records what it belongs to, and a checkpoint of something else is refused.

The identity (concept word, model, the training method's options, key hyperparameters) is saved in every
checkpoint (ConceptModule.on_save_checkpoint) and compared here, before any weights load. Policy for a
hyperparameter that differs on resume: refused (the optimizer state, LR schedule and samples already
drawn belong to the old value, so "applying" it would be a different run under the old run's name);
only `steps` may change (training is extended or shortened; logged).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from textinv.errors import UserError

log = logging.getLogger(__name__)

IDENTITY_KEY = "textinv_identity"
CHANGEABLE = ("steps",)  # every other key of the identity must match
# The override that sets each generic key; a method's own keys are `method.<key>`.
OVERRIDES = {"method": "method", "placeholder": "concept.placeholder", "model": "model", "model_location": "model.path",
             "initializer": "init", "batch_size": "data.batch_size",
             "accumulate_grad_batches": "trainer.accumulate_grad_batches", "schedule": "module.optim.schedule",
             "warmup_steps": "module.optim.warmup_steps", "weight_decay": "module.optim.weight_decay",
             "scale_lr": "module.optim.scale_lr", "masked": "data.masked", "mask_floor": "data.mask.floor",
             "mask_unmasked_probability": "data.mask.unmasked_probability", "mask_normalize": "data.mask.normalize"}


def run_identity(cfg: DictConfig, word: str, model_name: str, model_location: str | None, method: dict) -> dict:
    """What a checkpoint of this run belongs to: the concept's word (`placeholder`, the name checkpoints have
    always used), the model, the training method's identity (Method.identity) and the shared hyperparameters."""
    o = cfg.module.optim
    return {"placeholder": word, "model": model_name, "model_location": model_location, **method,
            "lr": cfg.lr if isinstance(cfg.lr, str) else float(cfg.lr),  # a number, or a schedule string
            "seed": int(cfg.seed), "batch_size": int(cfg.data.batch_size),
            "accumulate_grad_batches": int(cfg.trainer.accumulate_grad_batches), "schedule": str(o.schedule),
            "warmup_steps": int(o.warmup_steps), "weight_decay": float(o.weight_decay), "scale_lr": bool(o.scale_lr),
            "steps": int(cfg.steps), **mask_identity(cfg.data)}


def mask_identity(data: DictConfig) -> dict:
    """data.masked and, when on, its loss weights (a masked run resumed unmasked would train another loss)."""
    if not data.get("masked", False):
        return {"masked": False}
    m = data.mask
    return {"masked": True, "mask_floor": float(m.floor), "mask_unmasked_probability": float(m.unmasked_probability),
            "mask_normalize": bool(m.normalize)}


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint's top level, or one line saying why it cannot be used."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # empty, truncated or not a checkpoint at all
        raise UserError(f"ckpt_path={path} is not a readable checkpoint (not a torch zip archive: truncated or another "
                        "kind of file); give a .ckpt from a run's checkpoints/ folder, or drop ckpt_path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise UserError(f"ckpt_path={path} is not a readable checkpoint of this project ({type(err).__name__}: "
                        f"{first}); give a .ckpt from a run's checkpoints/ folder, or drop ckpt_path") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"ckpt_path={path} is not a Lightning checkpoint (no state_dict); give a .ckpt from a run's "
                        "checkpoints/ folder")
    return ckpt


def saved_identity(ckpt: dict) -> dict:
    """The identity a checkpoint records (checkpoints older than the identity, all textual inversion: the
    word, the model and the vector count only)."""
    ident = dict(ckpt.get(IDENTITY_KEY) or {})
    if "placeholder" not in ident and isinstance(ckpt.get("placeholder"), dict):
        ident["placeholder"] = ckpt["placeholder"].get("token")
    if "model" not in ident and ckpt.get("model_name") is not None:
        ident["model"] = ckpt["model_name"]
    if "num_vectors" not in ident:
        tensors = [v for v in (ckpt.get("state_dict") or {}).values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1 and tensors[0].ndim == 2:
            ident["num_vectors"] = int(tensors[0].shape[0])
    return ident


def check_resume(path: str | Path, expected: dict) -> None:
    """Refuse a checkpoint of another run (one line naming the first difference); log a changed `steps`."""
    ident = saved_identity(read_checkpoint(path))
    for key in ident:
        if key not in CHANGEABLE and ident[key] != expected.get(key):
            override = OVERRIDES.get(key, key if key in ("lr", "seed") else f"method.{key}")
            raise UserError(f"checkpoint {path} belongs to a run with {override}={ident[key]!r}, this run has "
                            f"{override}={expected.get(key)!r}; resume with the same value, or start a new run "
                            "(a new hydra.run.dir=..., without ckpt_path)")
    if "steps" in ident and ident["steps"] != expected.get("steps"):
        log.warning("resuming with steps=%s (the checkpoint's run had steps=%s): training now ends at step %s",
                    expected.get("steps"), ident["steps"], expected.get("steps"))
