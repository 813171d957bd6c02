"""The one function that turns the generate form into images: a model source + learned embedding files +
sampling settings -> images, through textinv.models.generation.ImageGenerator (the code generate.py runs).
When training methods become pluggable, this is the one place that learns to load their files."""

from __future__ import annotations

import copy
import json
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from textinv.errors import UserError

# ModelSource's arguments a run's config.yaml may set; its `_target_` only from MODEL_TARGETS (a run folder must
# not choose code for the server to run).
MODEL_KEYS = ("_target_", "source", "hub_id", "path", "revision", "name", "prediction_type", "seed", "family",
              "resolution")
# What a run's `model._target_` may name: the page builds models from run folders, so it never calls any other
# target a config file holds (the toy world's is named by string, as conf/model/toy.yaml names it).
MODEL_TARGETS = ("textinv.models.frozen_sd.ModelSource", "textinv.toyworld.plugins.model_source")
TOY_MODEL = {"_target_": "textinv.toyworld.plugins.model_source", "source": "toy", "name": "toy", "resolution": 64}


class Cancelled(Exception):
    """The job's cancel flag was seen between two sampler steps."""


@dataclass
class Request:
    model: dict  # ModelSource arguments (MODEL_KEYS)
    embeddings: list[str] = field(default_factory=list)  # learned embedding files (absolute paths)
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 5.0
    num_images: int = 1
    scheduler: str = "ddim"
    batch_size: int = 4

    @property
    def model_key(self) -> str:
        """Jobs of one model run one at a time."""
        return json.dumps(self.model, sort_keys=True)

    @property
    def unet_calls(self) -> int:
        """UNet forwards of the job (one per sampler step per batch): its progress bar's length."""
        return self.steps * math.ceil(self.num_images / self.batch_size)

    def settings(self) -> dict:
        return asdict(self)


def model_arguments(node) -> dict:
    """ModelSource arguments from a run's `model:` config node (unknown keys and `_target_` dropped)."""
    node = node if isinstance(node, dict) else {}
    args = {k: node[k] for k in MODEL_KEYS if node.get(k) is not None}
    if args.get("_target_") not in MODEL_TARGETS:  # runs written before the layout named their class elsewhere
        args["_target_"] = TOY_MODEL["_target_"] if args.get("source") == "toy" else MODEL_TARGETS[0]
    return args


def model_source(model: dict):
    """The ModelSource of a request's model arguments, through an allow-listed `_target_` only."""
    from hydra.utils import get_method

    args = dict(model)
    target = args.pop("_target_", MODEL_TARGETS[0])
    if target not in MODEL_TARGETS:
        raise UserError(f"model._target_={target!r} is not a model this page loads ({', '.join(MODEL_TARGETS)})")
    return get_method(target)(**args)


_loaded: dict[str, tuple] = {}  # the last model loaded: (source, frozen model); reloading costs seconds per job
_load_lock = threading.Lock()


def frozen_model(model: dict):
    """The model of `model`'s arguments, loaded once and kept (one at a time): each job gets its own copies of
    the tokenizers and text encoders, which loading embeddings changes in place; the UNet and VAE are shared."""
    import torch

    key = json.dumps(model, sort_keys=True)
    with _load_lock:
        if key not in _loaded:
            _loaded.clear()
            source = model_source(model)
            frozen = source.load(source.load_tokenizer())
            _loaded[key] = (source, frozen.to("cuda") if torch.cuda.is_available() else frozen)
        source, frozen = _loaded[key]
        mine = copy.copy(frozen)
        for name in ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2"):
            setattr(mine, name, copy.deepcopy(getattr(frozen, name)))
        return source, mine


def generate_images(request: Request, on_unet_call: Callable[[], None] = lambda: None) -> list:
    """Images of the request (PIL, image k from seed + k), each with its prompt and seed (GeneratedImage);
    `on_unet_call` runs before every UNet forward (progress; raising Cancelled there stops the job)."""
    from textinv.methods.textual_inversion import families
    from textinv.methods.textual_inversion.loading import load_embeddings, resolve_tokens
    from textinv.models.generation import ImageGenerator

    source, frozen = frozen_model(request.model)
    widths = source.info().widths
    loaded = [families.read_embedding(source.family, Path(f), widths) for f in request.embeddings]
    names = resolve_tokens(frozen.tokenizer, loaded)
    generator = ImageGenerator.from_frozen(frozen, request.scheduler)
    load_embeddings(generator, loaded, names)
    hook = generator.unet.register_forward_pre_hook(lambda *_: on_unet_call())
    try:
        rows = generator.samples([request.prompt], request.num_images, request.seed, request.steps,
                                 request.guidance_scale, request.negative_prompt, batch_size=request.batch_size)
    finally:
        hook.remove()
    return rows[0]
