"""Hypernetwork files: AUTOMATIC1111's `.pt` (ComfyUI reads the same file) and a pickle-free safetensors copy.

`.pt` layout (a plain dict, torch.save): `{width (int): (key module state dict, value module state dict), ...,
"name", "step", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization", "use_dropout",
"dropout_structure", "last_layer_dropout", "activate_output", "sd_checkpoint", "sd_checkpoint_name",
"optional_info"}`. What the tools demand of it:
- AUTOMATIC1111 lists `**/*.pt` only, keeps integer keys only (a string "768" loads nothing), loads each state
  dict strictly into the module its metadata builds, and unpickles through its restricted unpickler: plain
  containers, numbers, strings and tensors (no dtype objects, numpy scalars or classes) inside a zip whose entries
  pass the same check as embeddings (the trimmed zip of `a1111_safe_torch_bytes`).
- ComfyUI `load_hypernetwork_patch` (torch.load weights_only) rebuilds each module from the `.weight` keys in
  dict order, and defaults a missing `activate_output` to False where AUTOMATIC1111 defaults it to True: every
  field is written explicitly.
The safetensors copy flattens the modules to `"<width>.<k|v>.<layer key>"` and keeps the metadata as JSON
strings, for tools and people who refuse pickles; this project reads both.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from textinv.errors import UserError
from textinv.methods.hypernetwork.network import Hypernetwork, HypernetworkSpec
from textinv.methods.textual_inversion.formats import a1111_safe_torch_bytes
from textinv.utils.atomic import atomic_write

PROJECTIONS = ("k", "v")
MAX_FILE_BYTES = 2 << 30  # = textinv.validation.MAX_FILE_BYTES["hypernetwork"]; a hypernetwork of SD's widths at [1, 2, 1] is ~ 80 MB; refuse what cannot be one


def spec_fields(spec: HypernetworkSpec) -> dict:
    """The metadata keys of AUTOMATIC1111's layout, every one stated (plain Python values only)."""
    return {"layer_structure": [float(x) for x in spec.layer_structure], "activation_func": spec.activation,
            "is_layer_norm": bool(spec.layer_norm), "weight_initialization": spec.weight_init,
            "use_dropout": bool(spec.use_dropout), "dropout_structure": [float(x) for x in spec.dropout_structure],
            "last_layer_dropout": bool(spec.last_layer_dropout), "activate_output": bool(spec.activate_output)}


def _state(module) -> dict:
    """A plain dict (no OrderedDict class in the pickle) of fp32 contiguous copies, in the module's order."""
    return {k: v.detach().float().contiguous().clone().cpu() for k, v in module.state_dict().items()}


def save_a1111_hypernetwork(path: Path, hypernetwork: Hypernetwork, name: str, step: int = 0,
                            sd_checkpoint_name: str | None = None) -> Path:
    data: dict = {int(w): (_state(pair[0]), _state(pair[1])) for w, pair in hypernetwork.pairs.items()}
    data.update({"name": str(name), "step": int(step), **spec_fields(hypernetwork.spec), "sd_checkpoint": None,
                 "sd_checkpoint_name": sd_checkpoint_name, "optional_info": None})
    return atomic_write(Path(path), lambda p: p.write_bytes(a1111_safe_torch_bytes(data)))


def save_safetensors_hypernetwork(path: Path, hypernetwork: Hypernetwork, name: str, step: int = 0,
                                  sd_checkpoint_name: str | None = None) -> Path:
    tensors = {f"{w}.{PROJECTIONS[i]}.{k}": v for w, pair in hypernetwork.pairs.items()
               for i, module in enumerate(pair) for k, v in _state(module).items()}
    meta = {"name": str(name), "step": int(step), "sd_checkpoint_name": sd_checkpoint_name,
            **spec_fields(hypernetwork.spec)}
    return atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata={
        "format": "textinv-hypernetwork", **{k: json.dumps(v) for k, v in meta.items()}}))


class LoadedHypernetwork:
    """A file read back: the rebuilt network (eval mode, fp32) and its name and step."""

    def __init__(self, path: Path, hypernetwork: Hypernetwork, name: str, step: int):
        self.path, self.hypernetwork, self.name, self.step = path, hypernetwork, name, step


def _spec_from(meta: dict, path: Path) -> HypernetworkSpec:
    """AUTOMATIC1111's reading of the metadata (its defaults where a field is missing, e.g. activate_output)."""
    try:
        spec = HypernetworkSpec(layer_structure=tuple(meta.get("layer_structure") or (1, 2, 1)),
                                activation=meta.get("activation_func") or "linear",
                                layer_norm=bool(meta.get("is_layer_norm", False)),
                                use_dropout=bool(meta.get("use_dropout", False)),
                                last_layer_dropout=bool(meta.get("last_layer_dropout", False)),
                                activate_output=bool(meta.get("activate_output", True)),
                                weight_init=meta.get("weight_initialization") or "Normal",
                                dropout_structure=tuple(meta.get("dropout_structure") or ()))
        spec.check(where=str(path))
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: unreadable hypernetwork settings ({err})") from err
    return spec


def _build(path: Path, spec: HypernetworkSpec, states: dict[int, tuple[dict, dict]]) -> Hypernetwork:
    if not states:
        raise UserError(f"{path} holds no hypernetwork modules (no integer width keys); is it a hypernetwork file?")
    network = Hypernetwork(states, spec, seed=None)
    for width, pair in states.items():
        for module, state in zip(network.pairs[str(width)], pair):
            bad = [k for k, v in state.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point()
                                                         and torch.isfinite(v).all())]
            if bad:
                raise UserError(f"{path}: width {width} holds a non-finite or non-float tensor ({bad[0]})")
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise UserError(f"{path}: width {width} does not match its layer settings "
                                f"({str(err).splitlines()[0]})") from err
    return network.float().eval()


def _check_size(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"hypernetwork file {path} does not exist")
    from textinv.validation import check_file_size

    check_file_size(path, "hypernetwork", "is it a model checkpoint?")


def _looks_like_torch_file(path: Path) -> bool:
    """A torch zip, or a legacy pickle (protocol 2+ starts with 0x80)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK") or head[:1] == b"\x80"


def read_hypernetwork(path: str | Path) -> LoadedHypernetwork:
    """Either layout; never unpickles code (weights_only); a file that is not a hypernetwork is one line."""
    path = Path(path)
    _check_size(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _looks_like_torch_file(path):  # torch's weights_only refusal of a real pickle, not a damaged file
            raise UserError(f"refused to load {path}: it holds Python objects beyond tensors, which could run "
                            "code (ask for the .safetensors copy)") from err
        raise UserError(f"{path} is not a readable torch file (damaged or not a torch file)") from err
    except Exception as err:  # noqa: BLE001 - a damaged file makes torch raise almost anything (IndexError, ...)
        raise UserError(f"{path} is not a readable torch file ({type(err).__name__})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a hypernetwork file (a {type(data).__name__}, not a dict)")
    states = {}
    for key, value in data.items():
        if isinstance(key, int):
            if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(s, dict) for s in value)):
                raise UserError(f"{path}: width {key} must hold a (key, value) pair of state dicts")
            states[key] = (dict(value[0]), dict(value[1]))
    network = _build(path, _spec_from(data, path), states)
    return LoadedHypernetwork(path, network, str(data.get("name") or path.stem), int(data.get("step") or 0))


def _read_safetensors(path: Path) -> LoadedHypernetwork:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ValueError, ...
        raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    if raw.get("format") != "textinv-hypernetwork":
        raise UserError(f"{path} is not a hypernetwork safetensors file (format={raw.get('format')!r})")
    meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    states: dict[int, tuple[dict, dict]] = {}
    for key, value in tensors.items():
        width, projection, rest = key.split(".", 2)
        states.setdefault(int(width), ({}, {}))[PROJECTIONS.index(projection)][rest] = value
    network = _build(path, _spec_from(meta, path), states)
    return LoadedHypernetwork(path, network, str(meta.get("name") or path.stem), int(meta.get("step") or 0))


def is_hypernetwork_file(path: Path) -> bool:
    """A hypernetwork in either layout (cheap for safetensors: the header's metadata; a .pt is read safely)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
        return False
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return (f.metadata() or {}).get("format") == "textinv-hypernetwork"
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not readable as either: the embedding converter says why
        return False
    return isinstance(data, dict) and any(isinstance(k, int) for k in data)


def convert_hypernetwork(src: Path, out: Path) -> Path:
    """Between AUTOMATIC1111's .pt and the safetensors copy, weights and settings unchanged."""
    loaded = read_hypernetwork(src)
    writers = {".pt": save_a1111_hypernetwork, ".safetensors": save_safetensors_hypernetwork}
    if out.suffix not in writers:
        raise UserError(f"{out}: a hypernetwork converts to NAME.pt (AUTOMATIC1111, ComfyUI) or NAME.safetensors")
    return writers[out.suffix](out, loaded.hypernetwork, loaded.name, loaded.step)
