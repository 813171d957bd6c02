"""Applying hypernetworks to a diffusers UNet: forward pre-hooks on every attention's `to_k` and `to_v`.

The hook sees exactly what AUTOMATIC1111's patched attention and ComfyUI's attn1/attn2 patches transform: the
key and value *inputs* (the text context in cross-attention, the image features themselves in self-attention),
chosen by their width. Queries are untouched. Several hypernetworks stack in order, each on the previous output.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from diffusers.models.attention_processor import Attention

from textinv.errors import UserError
from textinv.methods.hypernetwork.network import Hypernetwork


def attention_widths_from_config(unet_config: dict) -> list[int]:
    """The same widths from a UNet config alone: the UNet is built on the meta device (no memory, no weights), so
    a width the model lacks is refused before any weights load, for any architecture diffusers can build."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in dict(unet_config).items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return attention_input_widths(unet)


def attention_input_widths(unet) -> list[int]:
    """The widths of every attention's key/value input in this UNet (SD 1.x: 320, 640, 1280 and 768)."""
    return sorted({int(m.to_k.in_features) for m in unet.modules() if isinstance(m, Attention)})


class HypernetworkHooks:
    """Live hooks of a stack of (hypernetwork, multiplier) on one UNet; `remove()` restores the UNet."""

    def __init__(self, unet, stack: Sequence[tuple[Hypernetwork, float]]):
        self.stack = list(stack)
        self.handles = []
        for module in unet.modules():
            if isinstance(module, Attention):
                self.handles.append(module.to_k.register_forward_pre_hook(self._hook(0)))
                self.handles.append(module.to_v.register_forward_pre_hook(self._hook(1)))

    def _hook(self, which: int):
        def pre_hook(_linear, args):
            x = args[0]
            for hypernetwork, multiplier in self.stack:
                x = hypernetwork.transform(x, which, multiplier)
            return (x, *args[1:])
        return pre_hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


@contextmanager
def hypernetworks_applied(unet, stack: Sequence[tuple[Hypernetwork, float]]):
    hooks = HypernetworkHooks(unet, stack)
    try:
        yield hooks
    finally:
        hooks.remove()


def check_widths(requested: Sequence[int], available: Sequence[int], where: str = "method.widths") -> None:
    missing = sorted(set(int(w) for w in requested) - set(available))
    if missing:
        raise UserError(f"{where}={list(requested)}: this model has no attention input of width "
                        f"{', '.join(map(str, missing))}; its widths are {', '.join(map(str, available))}")


