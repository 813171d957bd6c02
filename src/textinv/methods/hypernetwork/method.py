"""Hypernetworks as a training method: MLPs on the UNet attention's key and value inputs, trained against the
frozen model; no new word. Its prompts name the concept with the initializer word (`a photo of a heart`),
so evaluation compares `SD + HN` with `SD` on the very same prompts and seeds: the hypernetwork is what differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from textinv.errors import UserError
from textinv.methods.base import Method
from textinv.methods.hypernetwork.attach import (HypernetworkHooks, attention_input_widths,
                                                 attention_widths_from_config, check_widths)
from textinv.methods.hypernetwork.files import save_a1111_hypernetwork, save_safetensors_hypernetwork
from textinv.methods.hypernetwork.network import Hypernetwork as HypernetworkModules
from textinv.methods.hypernetwork.network import HypernetworkSpec
from textinv.runs.layout import hypernetwork_file, hypernetwork_safetensors_file
from textinv.runs.results import HN_ROW
from textinv.validation import safe_name



class Hypernetwork(Method):
    """AUTOMATIC1111's options (`layer_structure`, `activation`, `layer_norm`, `use_dropout`, `last_layer_dropout`,
    `activate_output`, `weight_init`) and `widths`: `auto` (every attention input width of the model) or a list."""

    name, row_label, log_tag = "hypernetwork", HN_ROW, "hn"
    trains_inside = frozenset({"unet"})  # its modules run inside the UNet's attentions

    def __init__(self, word: str, initializer: str | None, seed: int = 0, layer_structure: Sequence[float] = (1, 2, 1),
                 activation: str = "linear", layer_norm: bool = False, use_dropout: bool = False,
                 last_layer_dropout: bool = False, activate_output: bool = False, weight_init: str = "Normal",
                 widths: str | Sequence[int] = "auto"):
        super().__init__(word, initializer, seed)
        self.spec = HypernetworkSpec(tuple(layer_structure), activation, bool(layer_norm), bool(use_dropout),
                                     bool(last_layer_dropout), bool(activate_output), weight_init)
        self.widths = widths
        self.network: HypernetworkModules | None = None
        self.hooks: HypernetworkHooks | None = None
        self.model_name = None
        self._last_good: dict[str, torch.Tensor] | None = None

    @property
    def file_name(self) -> str:
        """AUTOMATIC1111 names a hypernetwork after its file: the concept's word without brackets."""
        return safe_name(self.word.strip("<>") or self.word)

    # --- before weights ----------------------------------------------------------------------
    def check(self, tokenizer, train_prompts: Iterable[str], eval_prompts: Iterable[str]) -> None:
        self.spec.check()
        if self.initializer is None or not str(self.initializer).strip():
            raise UserError("method=hypernetwork names the concept with its initializer word in every prompt, and "
                            "it is empty; set init=<word> (e.g. init=heart)")
        if not tokenizer(str(self.initializer), add_special_tokens=False).input_ids:
            raise UserError(f"init={self.initializer!r} tokenizes to nothing; use a plain word such as init=heart")
        if self.widths != "auto" and (isinstance(self.widths, str) or not list(self.widths)):
            raise UserError(f"method.widths={self.widths!r}: give auto or a list of widths such as [768, 320]")

    def check_model(self, source) -> None:
        """A width the model lacks, refused from its UNet config before weights load."""
        if self.widths != "auto":
            check_widths(list(self.widths), attention_widths_from_config(source.unet_config()))

    def identity(self) -> dict:
        spec = self.spec
        return {"layer_structure": [float(x) for x in spec.layer_structure], "activation": spec.activation,
                "layer_norm": spec.layer_norm, "use_dropout": spec.use_dropout,
                "last_layer_dropout": spec.last_layer_dropout, "activate_output": spec.activate_output,
                "weight_init": spec.weight_init, "widths": self.widths if self.widths == "auto" else
                sorted(int(w) for w in self.widths), "initializer": self.initializer}

    def header(self) -> dict:
        return {"word": str(self.initializer), "layer_structure": [float(x) for x in self.spec.layer_structure]}

    # --- training ----------------------------------------------------------------------------
    def attach(self, frozen) -> None:
        available = attention_input_widths(frozen.unet)
        widths = available if self.widths == "auto" else [int(w) for w in self.widths]
        check_widths(widths, available)
        self.model_name = frozen.name
        self.network = HypernetworkModules(widths, self.spec, seed=self.seed)  # registered: trains, moves, syncs
        self.hooks = HypernetworkHooks(frozen.unet, [(self.network, 1.0)])  # multiplier 1 while training

    def prompt(self, prompt: str) -> str:
        return prompt.replace(self.word, str(self.initializer))

    @property
    def eval_word(self) -> str:
        return str(self.initializer)

    def state(self) -> dict[str, torch.Tensor]:
        return {f"network.{k}": v.detach().clone() for k, v in self.network.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        mine = {k[len("network."):]: v for k, v in state.items() if k.startswith("network.")}
        expected = self.network.state_dict()
        shapes = {k: tuple(v.shape) for k, v in mine.items()}
        if shapes != {k: tuple(v.shape) for k, v in expected.items()}:
            raise UserError("the checkpoint holds a hypernetwork of other widths or layers than this run's; resume "
                            "with the same model and method options")
        self.network.load_state_dict(mine)

    def keep_if_finite(self) -> bool:
        if all(torch.isfinite(p).all() for p in self.network.parameters()):
            self._last_good = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            return True
        if self._last_good is not None:
            self.network.load_state_dict(self._last_good)
        return False

    # --- files -------------------------------------------------------------------------------
    def write_files(self, folder: Path, step: int, suffix: str = "") -> list[Path]:
        """`<name>.pt` (AUTOMATIC1111's `models/hypernetworks/`, ComfyUI's `models/hypernetworks/`) first, then
        the pickle-free copy."""
        name = self.file_name
        return [save_a1111_hypernetwork(hypernetwork_file(folder, name, suffix), self.network, name, step,
                                        self.model_name),
                save_safetensors_hypernetwork(hypernetwork_safetensors_file(folder, name, suffix), self.network,
                                              name, step, self.model_name)]

    def summary(self) -> dict:
        return {"hypernetwork": self.file_name, "widths": self.network.widths,
                "parameters": sum(p.numel() for p in self.network.parameters())}

    # --- generation --------------------------------------------------------------------------
    def use_in(self, generator) -> None:
        """Evaluation samples from the same UNet, whose hooks are live already: nothing to add."""

    @classmethod
    def generation_files(cls, cfg, source, tokenizer):
        from textinv.methods.hypernetwork.loading import HypernetworkFiles

        return HypernetworkFiles.read(cfg, source)
