"""What a hypernetwork is: AUTOMATIC1111's options (`HypernetworkSpec`) and the modules they build.

Facts (AUTOMATIC1111 v1.10.1 `modules/hypernetworks/hypernetwork.py`, ComfyUI `comfy_extras/nodes_hypernetwork.py`;
/work/shared/CONTEXT.md section 12): one module per attention input width and per projection (key, value); a
module is `nn.Sequential` named `linear`: for each consecutive pair of `layer_structure` a Linear(width * a,
width * b), then the activation (not after the last Linear unless `activate_output`), then LayerNorm if
`layer_norm`, then Dropout where the dropout structure says; applied as `x + linear(x) * multiplier`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from textinv.errors import UserError

# The activations both tools rebuild: AUTOMATIC1111 takes any torch activation by lower-cased class name, ComfyUI
# only these (others: it logs an error and runs without the hypernetwork). "swish" is Hardswish in both.
ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
               "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign,
               "mish": nn.Mish}
INITS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
DROPOUT_P = 0.3  # the only rate ComfyUI rebuilds; AUTOMATIC1111's structure parser uses it too


@dataclass(frozen=True)
class HypernetworkSpec:
    """AUTOMATIC1111's options, each stored in the file (the tools' defaults differ where a field is missing)."""

    layer_structure: tuple[float, ...] = (1, 2, 1)
    activation: str = "linear"
    layer_norm: bool = False
    use_dropout: bool = False
    last_layer_dropout: bool = False
    activate_output: bool = False
    weight_init: str = "Normal"
    dropout_structure: tuple[float, ...] = field(default=(), compare=False)  # derived unless read from a file

    def __post_init__(self):
        object.__setattr__(self, "layer_structure", tuple(float(x) for x in self.layer_structure))
        if not self.dropout_structure:
            object.__setattr__(self, "dropout_structure", tuple(self.default_dropouts()))

    def default_dropouts(self) -> list[float]:
        """AUTOMATIC1111's parse_dropout_structure: 0.3 after each hidden layer, the last hidden one only with
        last_layer_dropout, never after the output."""
        n = len(self.layer_structure)
        if not self.use_dropout:
            return [0.0] * n
        return [0.0] + [DROPOUT_P] * (n - 3) + [DROPOUT_P if self.last_layer_dropout else 0.0] + [0.0]

    def check(self, where: str = "method") -> None:
        """One line per mistake, before any weights load."""
        ls = self.layer_structure
        if len(ls) < 2 or ls[0] != 1 or ls[-1] != 1 or any(not x > 0 for x in ls):
            raise UserError(f"{where}.layer_structure={list(ls)}: it must start and end with 1 and hold positive "
                            "multipliers of the width, e.g. [1, 2, 1]")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"{where}.activation={self.activation!r}: choose one of {', '.join(ACTIVATIONS)} "
                            "(the ones both AUTOMATIC1111 and ComfyUI rebuild)")
        if self.weight_init not in INITS:
            raise UserError(f"{where}.weight_init={self.weight_init!r}: choose one of {', '.join(INITS)}")
        if self.layer_norm and self.activation != "linear" and not self.activate_output:
            # ComfyUI counts LayerNorm weights among the layers when it decides which Linear is the last, so it
            # would activate the output where AUTOMATIC1111 does not: the file would mean two different networks.
            raise UserError(f"{where}.layer_norm=true with activation={self.activation!r} needs "
                            f"{where}.activate_output=true (ComfyUI would rebuild it with an activated output "
                            "and AUTOMATIC1111 without)")
        ds = self.dropout_structure
        if len(ds) != len(ls) or ds[-1] != 0 or any(not 0 <= p < 1 for p in ds):
            raise UserError(f"{where}.dropout_structure={list(ds)}: one rate per layer_structure entry, each in "
                            "[0, 1), the last 0")

    def dims(self, width: int) -> list[int]:
        return [int(width * x) for x in self.layer_structure]


class HypernetworkModule(nn.Module):
    """One projection's transform for one width: `x + linear(x) * multiplier` (AUTOMATIC1111's layer order)."""

    def __init__(self, width: int, spec: HypernetworkSpec):
        super().__init__()
        dims = spec.dims(width)
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            last = i == len(dims) - 2
            if spec.activation != "linear" and (not last or spec.activate_output):
                layers.append(ACTIVATIONS[spec.activation]())
            if spec.layer_norm:
                layers.append(nn.LayerNorm(dims[i + 1]))
            if spec.dropout_structure[i + 1] > 0:
                layers.append(nn.Dropout(p=spec.dropout_structure[i + 1]))
        self.linear = nn.Sequential(*layers)

    def initialise(self, spec: HypernetworkSpec, generator: torch.Generator) -> None:
        """AUTOMATIC1111's initialisers; its "Normal" also draws LayerNorm weights from N(0, 0.01)."""
        nonlinearity = "leaky_relu" if spec.activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
                continue
            w, b = layer.weight.data, layer.bias.data
            if spec.weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
                nn.init.normal_(w, 0.0, 0.01, generator=generator)
            elif spec.weight_init == "XavierUniform":
                nn.init.xavier_uniform_(w, generator=generator)
            elif spec.weight_init == "XavierNormal":
                nn.init.xavier_normal_(w, generator=generator)
            elif spec.weight_init == "KaimingUniform":
                nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity, generator=generator)
            else:
                nn.init.kaiming_normal_(w, nonlinearity=nonlinearity, generator=generator)
            nn.init.zeros_(b)

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * multiplier


class Hypernetwork(nn.Module):
    """A key and a value module for each attention input width (`pairs[str(width)] = [key, value]`)."""

    def __init__(self, widths, spec: HypernetworkSpec, seed: int | None = 0):
        super().__init__()
        spec.check()
        self.spec = spec
        self.pairs = nn.ModuleDict({str(int(w)): nn.ModuleList([HypernetworkModule(int(w), spec),
                                                                 HypernetworkModule(int(w), spec)])
                                    for w in sorted(set(int(w) for w in widths))})
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
            for pair in self.pairs.values():
                for module in pair:
                    module.initialise(spec, generator)

    @property
    def widths(self) -> list[int]:
        return [int(w) for w in self.pairs]

    def transform(self, x: torch.Tensor, which: int, multiplier: float = 1.0) -> torch.Tensor:
        """`which` 0: the key input, 1: the value input. Widths without a module pass through unchanged."""
        pair = self.pairs[str(x.shape[-1])] if str(x.shape[-1]) in self.pairs else None
        if pair is None:
            return x
        return pair[which](x.float(), multiplier).to(x.dtype)  # the modules stay fp32 under a half-precision UNet
