"""Honest resume: a checkpoint records what it belongs to, and a checkpoint of something else is refused.

The identity (concept word, model, the training method's options, key hyperparameters) is saved in every
checkpoint (ConceptModule.on_save_checkpoint) and compared here, before any weights load. It also covers what
a folder path hides: the data (a content hash of every image and caption used, by file name), the model's
weights (a hash of ModelSource.fingerprint(), the baseline cache's: every weight file's size and date) and
every setting that changes the result (resolution, flips, augmentation, latent cache, optimizer betas/eps,
precision, frozen dtype, concept kind). Policy for anything that differs on resume: refused in one line naming
what changed (the optimizer state, LR schedule and samples already drawn belong to the old value, so "applying"
it would be a different run under the old run's name); only `steps` may change (training is extended or
shortened; logged). Checkpoints written before a key existed are not checked on that key.
"""

from __future__ import annotations

import hashlib
import logging
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
             "scale_lr": "module.optim.scale_lr", "resolution": "data.resolution", "flip_p": "data.flip_p",
             "augment": "data.augment", "latent_cache": "data.latent_cache", "betas": "module.optim.betas",
             "eps": "module.optim.eps", "precision": "trainer.precision", "frozen_dtype": "module.frozen_dtype",
             "kind": "concept.kind", "masked": "data.masked", "mask_floor": "data.mask.floor",
             "mask_unmasked_probability": "data.mask.unmasked_probability", "mask_normalize": "data.mask.normalize"}
DATA_KEY, MODEL_KEY = "data", "model_fingerprint"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (first 16 hex digits: enough to tell two versions of one file apart)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def data_identity(files) -> dict:
    """{file name: content hash} of the concept's images used and the captions beside them (`00.txt`)."""
    out = {}
    for path in files:
        path = Path(path)
        out[path.name] = file_digest(path)
        caption = path.with_suffix(".txt")
        if caption.is_file():
            out[caption.name] = file_digest(caption)
    return out


def model_identity(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def _shown_names(names) -> str:
    names = sorted(names)
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _data_change(saved: dict, now: dict) -> str:
    parts = []
    for what, names in (("added", set(now) - set(saved)), ("removed", set(saved) - set(now)),
                        ("replaced", {n for n in set(saved) & set(now) if saved[n] != now[n]})):
        if names:
            parts.append(f"{what} {_shown_names(names)}")
    return "; ".join(parts)


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run_identity(cfg: DictConfig, word: str, model_name: str, model_location: str | None, method: dict,
                 data: dict | None = None, model_fingerprint: str | None = None) -> dict:
    """What a checkpoint of this run belongs to: the concept's word (`placeholder`, the name checkpoints have
    always used), the model and its weights' fingerprint, the data's content hashes, the training method's
    identity (Method.identity) and the shared hyperparameters and result-changing settings."""
    o = cfg.module.optim
    extra = {}
    if data is not None:
        extra[DATA_KEY] = data
    if model_fingerprint is not None:
        extra[MODEL_KEY] = model_fingerprint
    d = cfg.data
    settings = {"resolution": int(d.resolution), "flip_p": float(d.get("flip_p", 0.5)),
                "augment": _plain(d.get("augment")), "latent_cache": bool(d.get("latent_cache", True)),
                "betas": [float(b) for b in o.get("betas", (0.9, 0.999))], "eps": float(o.get("eps", 1e-8)),
                "precision": str(cfg.trainer.get("precision", "32")),
                "frozen_dtype": str(cfg.module.get("frozen_dtype", "auto")), "kind": str(cfg.concept.get("kind"))}
    return {"placeholder": word, "model": model_name, "model_location": model_location, **method, **extra,
            **settings,
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
    from textinv.validation import check_file_size

    check_file_size(path, "checkpoint", "give a .ckpt from a run's checkpoints/ folder, or drop ckpt_path")
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # empty, truncated or not a checkpoint at all
        raise UserError(f"ckpt_path={path} is not a readable checkpoint (not a torch zip archive: truncated or another "
                        "kind of file); give a .ckpt from a run's checkpoints/ folder, or drop ckpt_path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged archive makes torch raise almost anything
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
    fix = "put them back as they were, or start a new run (a new hydra.run.dir=..., without ckpt_path)"
    if DATA_KEY in ident and DATA_KEY in expected and ident[DATA_KEY] != expected[DATA_KEY]:
        raise UserError(f"checkpoint {path} was trained on other images or captions: since then the concept folder "
                        f"had {_data_change(ident[DATA_KEY], expected[DATA_KEY])}; {fix}")
    if MODEL_KEY in ident and MODEL_KEY in expected and ident[MODEL_KEY] != expected[MODEL_KEY]:
        raise UserError(f"checkpoint {path} was trained on other model weights: the files at "
                        f"{expected.get('model_location') or expected.get('model')} changed since (sizes or dates "
                        f"differ); restore those weights, or start a new run (a new hydra.run.dir=..., without "
                        "ckpt_path)")
    for key in ident:
        if key in (DATA_KEY, MODEL_KEY):
            continue
        if key not in CHANGEABLE and ident[key] != expected.get(key):
            override = OVERRIDES.get(key, key if key in ("lr", "seed") else f"method.{key}")
            raise UserError(f"checkpoint {path} belongs to a run with {override}={ident[key]!r}, this run has "
                            f"{override}={expected.get(key)!r}; resume with the same value, or start a new run "
                            "(a new hydra.run.dir=..., without ckpt_path)")
    if "steps" in ident and ident["steps"] != expected.get("steps"):
        log.warning("resuming with steps=%s (the checkpoint's run had steps=%s): training now ends at step %s",
                    expected.get("steps"), ident["steps"], expected.get("steps"))


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


NOT_SETTINGS = ("run_dir", "ckpt_path", "plan")  # where and how the command runs, not what it computes


def log_applied_changes(saved_config: Path, cfg: DictConfig) -> list[str]:
    """A resume that passed `check_resume` may still differ from the run's start in settings that do not change what
    is trained (evaluation, logging, checkpoint cadence, workers): they are applied, and each is logged (config.yaml
    keeps the values the run started with)."""
    from omegaconf import OmegaConf

    if not Path(saved_config).is_file():
        return []
    try:
        old = _flat(OmegaConf.to_container(OmegaConf.load(saved_config), resolve=False))
    except Exception as err:  # noqa: BLE001 - an unreadable copy only costs this log
        log.warning("cannot compare with %s (%s): changed settings are not listed", saved_config, err)
        return []
    new = _flat(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                     and not k.startswith(NOT_SETTINGS) and k.split(".")[0] not in NOT_SETTINGS)
    for key in changed:
        log.warning("resuming with %s=%r (the run started with %r): applied from here on", key, new.get(key),
                    old.get(key))
    return changed
