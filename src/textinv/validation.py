"""One validation layer: every user-facing config value against a declared type and range.

The rules are a table (key -> pydantic type, hint), applied to the composed Hydra config before any
weights load. A bad value is one line naming the key, the value and what is allowed (UserError, exit 2).
Keys absent from a config (e.g. a callback removed with `~callbacks.x`) are skipped.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

from textinv.errors import UserError
from textinv.training.lr_schedule import parse_lr
from textinv.methods.hypernetwork.network import ACTIVATIONS as HN_ACTIVATIONS
from textinv.methods.hypernetwork.network import INITS as HN_INITS

# strict: no "5" -> 5, no True -> 1; floats accept ints; NaN/inf are never allowed.
Int = lambda **c: Annotated[int, Field(strict=True, **c)]  # noqa: E731
Num = lambda **c: Annotated[float, Field(strict=True, allow_inf_nan=False, **c)]  # noqa: E731
Bool = Annotated[bool, Field(strict=True)]
Str = Annotated[str, Field(strict=True)]
SEED = Int(ge=0, le=2**32 - 1)  # what seed_everything takes



def _parses_as_schedule(text: str) -> str:
    try:
        parse_lr(text)
    except UserError as err:
        raise ValueError(str(err)) from None
    return text


SCHEDULE = Annotated[str, Field(strict=True), AfterValidator(_parses_as_schedule)]  # AUTOMATIC1111's "rate:step, ..."

# Placeholders become file names (<name>.pt): no separators, no control characters, bounded length.
MAX_NAME = 100
PLACEHOLDER = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_NAME,
                                   pattern=r"^[^/\\\x00-\x1f\x7f\s]+$")]
NAME = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_NAME, pattern=r"^[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]*$")]
PRECISIONS = Literal[32, 64, 16, "32", "64", "16", "bf16", "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true",
                     "bf16-true", "transformer-engine"]

# key -> (type, what is allowed, as the error says it)
TRAIN_RULES: dict[str, tuple[Any, str]] = {
    "lr": (Union[Num(gt=0), SCHEDULE], "a positive number, e.g. lr=5e-4 (a too large one stops with a NaN report, exit "
                                  "3), or a schedule string such as lr='5e-3:100, 1e-3:1000, 1e-5'"),
    "steps": (Int(ge=1, le=10_000_000), "a positive number of optimizer steps (whole), e.g. steps=3000"),
    "seed": (SEED, "a whole number from 0 to 2**32-1"),
    "baseline": (Bool, "true or false"),
    "ckpt_path": (Union[Str, None], "a .ckpt file or 'last'"),
    "concept.name": (NAME, f"a folder-safe name (no path separators or control characters, not starting with a dot, "
                           f"at most {MAX_NAME} characters)"),
    "concept.placeholder": (PLACEHOLDER, f"one word without path separators, whitespace or control characters, at most "
                                         f"{MAX_NAME} characters, e.g. concept.placeholder='<my-cat>'"),
    "concept.initializer": (Union[Str, None], "a word such as tree"),
    # after concept.initializer: init follows it by default, and a bad value must be named where it was set
    "init": (Union[Str, None], "a word such as init=tree"),
    "concept.kind": (Literal["object", "style"], "object or style"),
    "concept.data_dir": (Str, "a folder of images"),
    "concept.prompts": (list[Str], "a list of prompts with {} for the placeholder"),
    "model.resolution": (Int(ge=8, le=4096), "the model's native size in pixels, e.g. 512 (SD 1.x) or 1024 (SDXL)"),
    "model.family": (Union[Literal["sd", "sdxl"], None], "is unknown; use one of sd, sdxl (or null to detect it)"),
    "data.resolution": (Int(ge=8, le=4096), "a whole number of pixels from 8 to 4096, a multiple of the model's "
                                            "64 (SD 1.x) or 32 (SDXL)"),
    "data.batch_size": (Int(ge=1, le=1024), "a whole number >= 1 (images per step per device)"),
    "data.flip_p": (Num(ge=0, le=1), "a probability from 0 to 1"),
    "data.latent_cache": (Bool, "true or false"),
    "data.num_workers": (Int(ge=0, le=256), "a whole number >= 0"),
    "data.masked": (Bool, "true or false"),
    "data.mask.floor": (Num(ge=0, le=1), "a weight from 0 to 1 (outside the mask)"),
    "data.mask.unmasked_probability": (Num(ge=0, le=1), "a probability from 0 to 1"),
    "data.mask.normalize": (Bool, "true or false"),
    "data.augment.crop_scale": (Num(gt=0, le=1), "a fraction in (0, 1] (1 = off)"),
    "data.augment.rotation": (Num(ge=0, le=180), "degrees from 0 to 180"),
    "data.augment.color_jitter": (Num(ge=0, le=1), "a strength from 0 to 1"),
    "method.num_vectors": (Int(ge=1, le=75), "a whole number from 1 to 75 (the text encoder's 77-token window "
                                             "minus start and end)"),
    "method.init_method": (Literal["word", "random"], "word or random"),
    "method.norm_rescale": (Bool, "true or false (rescale each vector to the vocabulary's median norm after each step)"),
    "method.init_pull": (Num(ge=0, le=1e6), "a weight >= 0 (0 = off) of the L2 pull toward the initializer"),
    "method.layer_structure": (list[Num(gt=0, le=64)], "a list of positive width multipliers starting and ending "
                                                        "with 1, e.g. [1,2,1]"),
    "method.activation": (Literal[tuple(HN_ACTIVATIONS)], f"is unknown; use one of {', '.join(HN_ACTIVATIONS)}"),
    "method.weight_init": (Literal[tuple(HN_INITS)], f"is unknown; use one of {', '.join(HN_INITS)}"),
    "method.layer_norm": (Bool, "true or false"),
    "method.use_dropout": (Bool, "true or false"),
    "method.last_layer_dropout": (Bool, "true or false"),
    "method.activate_output": (Bool, "true or false"),
    "method.widths": (Union[Literal["auto"], list[Int(ge=1, le=16384)]], "auto or a list of attention input widths, "
                                                                          "e.g. [768, 320]"),
    "compile": (Bool, "true or false (torch.compile the frozen UNet and text encoders, channels-last, SDPA)"),
    "module.compile": (Bool, "true or false (it follows compile=)"),
    "module.compile_backend": (Literal["inductor", "aot_eager", "eager"], "is unknown; use one of inductor, "
                                                                          "aot_eager, eager"),
    "module.compile_mode": (Union[Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                                  None], "is unknown; use null, default, reduce-overhead, max-autotune or "
                                         "max-autotune-no-cudagraphs"),
    "module.compile_freeze": (Bool, "true or false (sampling graphs with the frozen weights as constants)"),
    "module.frozen_dtype": (Literal["auto", "fp32", "fp16", "bf16"], "auto, fp32, fp16 or bf16"),
    "module.optim.weight_decay": (Num(ge=0, le=1), "a number from 0 to 1"),
    "module.optim.betas": (tuple[Num(ge=0, lt=1), Num(ge=0, lt=1)], "two numbers in [0, 1), e.g. [0.9,0.999]"),
    "module.optim.eps": (Num(gt=0, le=1), "a small positive number, e.g. 1e-8"),
    "module.optim.scale_lr": (Bool, "true or false"),
    "module.optim.schedule": (Literal["constant", "constant_with_warmup", "cosine", "linear"],
                              "constant, constant_with_warmup, cosine or linear"),
    "module.optim.warmup_steps": (Int(ge=0), "a whole number >= 0"),
    "trainer.accumulate_grad_batches": (Int(ge=1, le=1024), "a whole number >= 1 (1 = no accumulation)"),
    "trainer.devices": (Union[Int(ge=1), Literal["auto"], list[Int(ge=0)]], "a number >= 1, auto or a list of ids"),
    "trainer.num_nodes": (Int(ge=1), "a whole number >= 1"),
    "trainer.precision": (PRECISIONS, "32, 16-mixed or bf16-mixed"),
    "trainer.max_steps": (Int(ge=1), "a positive whole number (it follows steps=)"),
    "trainer.gradient_clip_val": (Union[Num(ge=0), None], "null or a number >= 0"),
    "trainer.log_every_n_steps": (Int(ge=1), "a whole number >= 1"),
    "callbacks.model_checkpoint.every_n_train_steps": (Int(ge=1), "a whole number >= 1 (steps between checkpoints)"),
    "callbacks.embedding_writer.every_n_steps": (Int(ge=0), "a whole number >= 0 (0 = no snapshots)"),
    "callbacks.embedding_writer.at_steps": (list[Int(ge=0)], "a list of steps >= 0"),
    "callbacks.data_parallel.every_n_steps": (Int(ge=0), "a whole number >= 0"),
    "eval.enabled": (Bool, "true or false"),
    "eval.every_n_steps": (Int(ge=0), "a whole number >= 0 (0 = only at_steps and the end)"),
    "eval.at_steps": (list[Int(ge=0)], "a list of steps >= 0"),
    "eval.at_end": (Bool, "true or false"),
    "eval.num_images": (Int(ge=1, le=100_000), "a whole number >= 1 (images per prompt)"),
    "eval.sampler_steps": (Int(ge=1, le=10_000), "a whole number >= 1"),
    "eval.guidance_scale": (Num(ge=0, le=100), "a number from 0 to 100 (1 or less: no guidance)"),
    "eval.scheduler": (Literal["ddim", "dpm", "unipc"], "is unknown; use one of ddim, dpm, unipc"),
    "eval.negative_prompt": (Union[Str, None], "a string"),
    "eval.seed": (SEED, "a whole number from 0 to 2**32-1"),
    "eval.batch_size": (Int(ge=1, le=1024), "a whole number >= 1"),
    "eval.resolution": (Int(ge=8, le=4096), "a whole number of pixels (it follows data.resolution)"),
    "eval.prompts": (Union[list[Str], None], "null or a list of prompts with {} for the placeholder"),
    "eval.fid.enabled": (Bool, "true or false"),
    "eval.fid.feature": (Literal[64, 192, 768, 2048], "64, 192, 768 or 2048"),
    "eval.fid.optional": (Bool, "true or false"),
    "eval.dino.enabled": (Bool, "true or false"),
    "eval.light.enabled": (Bool, "true or false"),
    "eval.light.num_images": (Int(ge=1, le=100_000), "a whole number >= 1 (images per prompt)"),
    "eval.light.sampler_steps": (Int(ge=1, le=10_000), "a whole number >= 1"),
    "eval.light.scheduler": (Literal["ddim", "dpm", "unipc"], "is unknown; use one of ddim, dpm, unipc"),
    "eval.clip_t_text": (Literal["original", "drop_article"], "is unknown; use original or drop_article"),
    "plan": (Bool, "true or false"),
    "callbacks.validation_loss.enabled": (Bool, "true or false"),
    "callbacks.validation_loss.every_n_steps": (Int(ge=0), "a whole number >= 0 (0 = off)"),
    "callbacks.validation_loss.batch_size": (Int(ge=1, le=1024), "a whole number >= 1"),
    "callbacks.validation_loss.chunk": (Int(ge=1, le=1024), "a whole number >= 1"),
    "callbacks.validation_loss.early_stop": (Bool, "true or false"),
    "callbacks.validation_loss.window": (Int(ge=2), "a whole number >= 2 (checks)"),
    "callbacks.validation_loss.threshold": (Num(gt=0, le=1), "a number in (0, 1]"),
    "callbacks.validation_loss.min_steps": (Int(ge=0), "a whole number >= 0"),
}

GENERATE_RULES: dict[str, tuple[Any, str]] = {
    "prompt": (Union[Str, list[Str]], 'a prompt, e.g. prompt="A <my-token> in the forest", or a list'),
    "embeddings": (Union[Str, list[Str]], "a list of embedding files, e.g. embeddings=[run/my-token.pt]"),
    "tokens": (Union[Str, list[Union[Str, None]], None], "null or one word per embedding file"),
    "hypernetworks": (Union[Str, list[Str]], "a list of hypernetwork files, e.g. hypernetworks=[run/my-style.pt]"),
    "hypernetwork_multiplier": (Num(ge=-10, le=10), "a number from -10 to 10, e.g. hypernetwork_multiplier=0.8"),
    "num_images": (Int(ge=1, le=100_000), "a positive whole number"),
    "seed": (SEED, "a whole number from 0 to 2**32-1"),
    "steps": (Int(ge=1, le=10_000), "a positive whole number"),
    "guidance_scale": (Num(ge=0, le=100), "a number from 0 to 100 (1 or less: no guidance)"),
    "scheduler": (Literal["ddim", "dpm", "unipc"], "is unknown; use one of ddim, dpm, unipc"),
    "negative_prompt": (Union[Str, None], "a string"),
    "height": (Union[Int(ge=8, le=4096), None], "null or a multiple of 8 from 8 to 4096"),
    "width": (Union[Int(ge=8, le=4096), None], "null or a multiple of 8 from 8 to 4096"),
    "batch_size": (Int(ge=1, le=1024), "a positive whole number"),
}


@lru_cache(maxsize=None)
def _adapter(tp) -> TypeAdapter:
    return TypeAdapter(tp)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_value(key: str, value: Any, rules: dict[str, tuple[Any, str]] = TRAIN_RULES) -> None:
    """One key's value against its rule; UserError naming key, value and what is allowed."""
    tp, allowed = rules[key]
    try:
        _adapter(tp).validate_python(value)
    except ValidationError:
        verb = "" if allowed.startswith("is ") else "must be "  # "is unknown; use ..." reads better for names
        raise UserError(f"{key}={_shown(value)} {verb}{allowed}") from None


def validate(cfg: DictConfig, rules: dict[str, tuple[Any, str]] = TRAIN_RULES) -> None:
    """Every rule whose key the config has; interpolations are resolved (a broken one is a UserError too)."""
    for key, _ in rules.items():
        parent, _, leaf = key.rpartition(".")
        try:
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if not isinstance(node, DictConfig) or leaf not in node:
                continue
            value = node[leaf]
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as err:
            raise UserError(f"{key}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0]})") from None
        check_value(key, value, rules)


# --- file names from user text ------------------------------------------------------------------
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f:*?\"<>|]")


def safe_name(text: str, max_len: int = MAX_NAME) -> str:
    """A file-name stem from user text: no separators or traversal, bounded length, never empty."""
    name = _UNSAFE.sub("_", str(text)).strip(" .")
    name = name[:max_len].strip(" .")
    return name or "embedding"


# --- size bounds: checked (a stat) before any file is read ------------------------------------------
# What each kind of input can reasonably be; a bigger file is another kind of file (a model checkpoint given as an
# embedding, a video among photos) and reading it would hang or exhaust memory before saying so.
MAX_FILE_BYTES: dict[str, int] = {
    "embedding": 64 << 20,  # 75 vectors x 2048 floats is 0.6 MB; A1111 files with extras stay far below
    "hypernetwork": 2 << 30,  # SD's widths at [1, 2, 1] are ~80 MB
    "checkpoint": 8 << 30,  # textual inversion: KBs; a hypernetwork with its optimizer state: hundreds of MB
    "image": 256 << 20,  # an 8000 px JPEG is ~20 MB
    "caption": 1 << 20,
    "run file": 256 << 20,  # metrics.json, run.json, config.yaml, prompts.json of a run folder
}


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def check_file_size(path, kind: str, fix: str = "") -> None:
    """One line (UserError) when `path` is larger than a `kind` can be (MAX_FILE_BYTES); a stat, no read."""
    import os

    try:
        size = os.stat(path).st_size
    except OSError:
        return  # missing or unreadable: the reader says so
    limit = MAX_FILE_BYTES[kind]
    if size > limit:
        raise UserError(f"{path} is {_size(size)}, more than any {kind} file ({_size(limit)} at most); it is not "
                        f"one{'; ' + fix if fix else ''}")
