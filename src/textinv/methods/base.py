"""The training-method seam: what a way of learning a concept against a frozen Stable Diffusion must say.

The training loop (textinv.training.module.ConceptModule), the job, resume, DDP checks, the file writer,
evaluation and generation ask a `Method`; none of them knows which method it is. A method is chosen by the
`conf/method/` group (`method=textual_inversion`) and built by Hydra with its own options; the job then
passes the run's concept word, initializer word and seed.

Life of a method in a training run:
    check(...)                 before any weights load: one-line errors for bad input
    identity()                 merged into the run identity a checkpoint must match (textinv.training.resume)
    attach(frozen)             model surgery on the loaded frozen model; afterwards parameters() train
    prompt(p)                  each training prompt, as the text encoders must read it
    regularization()           a term added to the loss (textual inversion: the L2 pull toward the initializer)
    after_step()               after each optimizer step (textual inversion: rescale to the vocabulary's norm)
    strength()                 what the loggers plot each step (textual inversion: each vector's norm, the
                               vocabulary's median norm as the reference line)
    state() / load_state(s)    what a checkpoint keeps and restores (never the frozen model)
    keep_if_finite()           the non-finite guard after each step: False means restored to the last good state
    write_files(folder, ...)   final files and snapshots (paths: textinv.runs.layout)
    summary(), findings(lr)    what it adds to run.json
    use_in(generator)          the trained state in an ImageGenerator sampling from the same frozen model
    generation_files(cfg, ...) generate.py: the method's files, read and checked, then loaded into a generator

It is an `nn.Module` so that what it adds outside the frozen modules (a hypernetwork's MLPs, hooked into
the UNet) is registered with the LightningModule and moves with it; what it puts inside a frozen module
(textual inversion's vectors, in the text encoder) is registered there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn


class Method(nn.Module):
    """One way of learning a concept: the trainable part and everything that knows its shape."""

    name: str  # its `conf/method/` choice, recorded in the run identity ("textual_inversion")
    row_label: str  # the results table's row of runs trained by this method ("SD + TI")
    log_tag: str  # the loggers' name for its evaluation grids and tables ("ti": eval/ti_grid)
    # the frozen parts ("unet", "text_encoders", "vae") whose forward holds trained tensors once attached: compile=true
    # must not fold their weights into constants (textinv.models.speed)
    trains_inside: frozenset[str] = frozenset()

    def __init__(self, word: str, initializer: str | None, seed: int = 0):
        super().__init__()
        self.word = word  # the concept's name in prompts (concept.placeholder)
        self.initializer = initializer  # the existing word the concept starts from (init=)
        self.seed = seed

    # --- before weights ----------------------------------------------------------------------
    def check(self, tokenizer, train_prompts: Iterable[str], eval_prompts: Iterable[str]) -> None:
        """Refuse bad input with a UserError, using the tokenizer only (no weights are loaded yet)."""

    def check_model(self, source) -> None:
        """Refuse options the model cannot take, from its configs alone (`ModelSource`; no weights load)."""

    def identity(self) -> dict:
        """The method's options a checkpoint must match to be resumed (keys are `method.<key>` overrides)."""
        return {}

    def header(self) -> dict:
        """Fields of eval/metrics.json's header (what results tables group runs by), baseline runs included."""
        return {}

    # --- training ----------------------------------------------------------------------------
    def attach(self, frozen) -> None:
        """Model surgery on the loaded `FrozenSD`: afterwards `parameters()` are the only trainable tensors."""
        raise NotImplementedError

    def prompt(self, prompt: str) -> str:
        """A prompt as the text encoders must read it (unchanged unless the method adds tokens)."""
        return prompt

    def regularization(self) -> torch.Tensor | None:
        """A term added to the training loss (None: nothing)."""
        return None

    def after_step(self) -> None:
        """Called after every optimizer step (not after each accumulated micro-batch)."""

    def strength(self) -> dict[str, float]:
        """Numbers the loggers record each step (`norm/...`); empty when the method has none."""
        return {}

    @property
    def eval_word(self) -> str:
        """What evaluation prompts put in place of `{}` for the trained model."""
        raise NotImplementedError

    def state(self) -> dict[str, torch.Tensor]:
        """The trained tensors, by name: all a checkpoint keeps."""
        raise NotImplementedError

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore `state()` of a checkpoint; a UserError when it belongs to another shape of run."""
        raise NotImplementedError

    def keep_if_finite(self) -> bool:
        """After each step: remember the state when finite and return True; otherwise restore the last
        finite state (as far as there is one) and return False."""
        raise NotImplementedError

    # --- files -------------------------------------------------------------------------------
    def write_files(self, folder: Path, step: int, suffix: str = "") -> list[Path]:
        """The method's files of the current state in `folder` (the file other tools load first)."""
        raise NotImplementedError

    def summary(self) -> dict:
        """Fields run.json gains when the run finishes (after `finished` and `step`)."""
        return {}

    def findings(self, lr: float) -> dict:
        """Warnings run.json records after its `files` (what went wrong without failing the run)."""
        return {}

    # --- generation --------------------------------------------------------------------------
    def use_in(self, generator) -> None:
        """Make a generator over the same (attached) frozen model sample with the trained state."""

    @classmethod
    def generation_files(cls, cfg, source, tokenizer) -> "GenerationFiles":
        """generate.py: this method's files named in `cfg`, read and checked against the model (`source`, its
        tokenizer) before any weights load."""
        raise NotImplementedError


class GenerationFiles:
    """A method's files for generate.py: read, checked, ready to go into a generator."""

    words: list[str]  # what prompts must contain for the files to act (empty: they act on every prompt)

    def rewrite_prompts(self, prompts: list[str]) -> list[str]:
        """The prompts as the generator must read them (a method's own prompt syntax removed)."""
        return prompts

    def load_into(self, generator) -> None:
        raise NotImplementedError

    def summary(self) -> dict:
        """What images.json records of them."""
        raise NotImplementedError
