"""What the core receives from the miniature world through configuration, never through an import:
`model=toy` names `model_source` as its `_target_`, and experiment=toyworld names `WorldClip` as
`eval.clip`'s. (A drawn concept's `drawer` is textinv.toyworld.draw.draw_concept.)"""

from __future__ import annotations

from dataclasses import dataclass

from textinv.evaluation.evaluator import ClipConfig
from textinv.models.frozen_sd import ModelSource
from textinv.toyworld import TOYWORLD_CLIP, TOYWORLD_SD


def model_source(source: str = "toy", path: str | None = None, **kwargs) -> ModelSource:
    """model=toy: the shipped diffusers folder, loaded through the same code as model.path=<folder>."""
    return ModelSource(source="hub", path=path or str(TOYWORLD_SD), **kwargs)


@dataclass
class WorldClip(ClipConfig):
    """eval.clip of the world: its own open_clip model folder; recorded in settings as arch `toyworld`."""

    arch: str = "toyworld"
    weights: str | None = None

    def scorer_arch(self) -> str:
        return f"local-dir:{TOYWORLD_CLIP}" if self.arch == "toyworld" else self.arch
