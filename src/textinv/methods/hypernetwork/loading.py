"""Hypernetwork files in generate.py: `method=hypernetwork hypernetworks=[style.pt, ...]`, each applied to every
prompt at `hypernetwork_multiplier` (default 1), or at the multiplier a prompt's `<hypernet:name:m>` tag gives
(AUTOMATIC1111's syntax; the tag is removed from the text). All prompts of one call share the UNet's hooks, so
they must agree on their tags."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from textinv.errors import UserError
from textinv.runs.layout import run_root_file
from textinv.methods.base import GenerationFiles
from textinv.methods.hypernetwork.attach import HypernetworkHooks, attention_widths_from_config, check_widths
from textinv.methods.hypernetwork.files import LoadedHypernetwork, read_hypernetwork
from textinv.methods.hypernetwork.prompt_syntax import split_hypernet_tags

log = logging.getLogger(__name__)


@dataclass
class HypernetworkFiles(GenerationFiles):
    loaded: list[LoadedHypernetwork]
    multipliers: list[float]
    words: list[str] = field(default_factory=list)  # they act on every prompt, whatever its words

    @classmethod
    def read(cls, cfg, source) -> "HypernetworkFiles":
        files = cfg.get("hypernetworks") or []
        files = [files] if isinstance(files, str) else list(files)
        if not files:
            raise UserError("method=hypernetwork needs hypernetworks=[file.pt, ...] (a run's <name>.pt or its "
                            "safetensors/ copy)")
        loaded = [read_hypernetwork(run_root_file(Path(str(f)).expanduser(), "hypernetworks")) for f in files]
        available = attention_widths_from_config(source.unet_config())
        for hn in loaded:
            check_widths(hn.hypernetwork.widths, available, where=f"{hn.path}: widths")
        names = [h.name.lower() for h in loaded]
        if len(set(names)) != len(names):
            raise UserError(f"two hypernetwork files share a name ({', '.join(h.name for h in loaded)}); "
                            "<hypernet:name:m> tags could not tell them apart")
        multiplier = float(cfg.get("hypernetwork_multiplier", 1.0))
        return cls(loaded, [multiplier] * len(loaded))

    def rewrite_prompts(self, prompts: list[str]) -> list[str]:
        """Strip `<hypernet:...>` tags; the tags (the same in every prompt) set the stack and its multipliers."""
        split = [split_hypernet_tags(p) for p in prompts]
        tag_sets = {tuple(tags) for _, tags in split}
        if len(tag_sets) > 1:
            raise UserError("the prompts carry different <hypernet:...> tags; one generate.py call applies one set "
                            "of hypernetworks to all its prompts, so generate them in separate calls")
        tags = next(iter(tag_sets))
        if tags:
            by_name = {h.name.lower(): h for h in self.loaded} | {h.path.stem.lower(): h for h in self.loaded}
            unknown = [name for name, _ in tags if name.lower() not in by_name]
            if unknown:
                raise UserError(f"<hypernet:{unknown[0]}> names no loaded file; loaded: "
                                f"{', '.join(h.name for h in self.loaded)}")
            self.loaded = [by_name[name.lower()] for name, _ in tags]  # the tags' order is the stacking order
            self.multipliers = [m for _, m in tags]
        return [text for text, _ in split]

    def load_into(self, generator) -> None:
        stack = [(h.hypernetwork.to(generator.unet.device), m) for h, m in zip(self.loaded, self.multipliers)]
        generator.hypernetwork_hooks = HypernetworkHooks(generator.unet, stack)
        for h, m in zip(self.loaded, self.multipliers):
            log.info("applying hypernetwork %s (%s, step %d) at multiplier %g", h.name, h.path, h.step, m)

    def summary(self) -> dict:
        return {"hypernetworks": [{"file": str(h.path), "name": h.name, "step": h.step, "multiplier": m}
                                  for h, m in zip(self.loaded, self.multipliers)]}
