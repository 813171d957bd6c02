"""Embedding files other tools read: diffusers, AUTOMATIC1111 and kohya. Loading never unpickles code.

- diffusers `learned_embeds.safetensors`: {placeholder: [n, dim]} (fp32, one key)
- AUTOMATIC1111 `<name>.pt`: {"string_to_token": {"*": 265}, "string_to_param": {"*": [n, dim]},
  "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
- kohya sd-scripts: {"emb_params": [n, dim]} (SDXL: {"clip_l": ..., "clip_g": ...})
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .errors import UserError

A1111_STAR_TOKEN = 265  # the id A1111 records for "*"; informational only


@dataclass
class LoadedEmbedding:
    token: str | None  # the placeholder the file names (None when the layout carries no name)
    vectors: torch.Tensor  # [num_vectors, dim], fp32
    layout: str  # diffusers | a1111 | kohya
    path: Path


def save_diffusers(path: Path, token: str, vectors: torch.Tensor) -> Path:
    tensors = {token: vectors.detach().float().cpu().contiguous()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def save_a1111(path: Path, name: str, vectors: torch.Tensor, step: int = 0, sd_checkpoint: str | None = None,
               sd_checkpoint_name: str | None = None) -> Path:
    data = {
        "string_to_token": {"*": A1111_STAR_TOKEN},
        "string_to_param": {"*": vectors.detach().float().cpu().clone()},
        "name": name,
        "step": int(step),
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
    }
    return atomic_write(path, lambda p: torch.save(data, p))


def _read(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"embedding file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{path} is not a readable safetensors file ({err})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"refused to load {path}: it holds Python objects beyond tensors, which could run code "
                        "(only plain tensor files are loaded; ask for a .safetensors file)") from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise UserError(f"{path} is not a readable torch embedding file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from err


def load_embedding(path: str | Path, expected_dim: int | None = None) -> LoadedEmbedding:
    """Read any of the three layouts; report wrong dimensions, unknown layouts and several tokens."""
    path = Path(path)
    data = _read(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise UserError(f"{path}: A1111 file with {len(params) if isinstance(params, dict) else 0} tokens; expected exactly one")
        token, vectors, layout = data.get("name") or path.stem, next(iter(params.values())), "a1111"
    elif "emb_params" in data:
        token, vectors, layout = None, data["emb_params"], "kohya"
    elif "clip_l" in data or "clip_g" in data:
        raise UserError(f"{path} is an SDXL embedding (clip_l/clip_g); this project trains SD 1.x/2.x text encoders")
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1 or len(tensors) != len(data):
            raise UserError(f"{path}: unknown embedding layout with keys {sorted(map(str, data))[:6]}; expected "
                            "diffusers {token: tensor}, A1111 string_to_param, or kohya emb_params")
        (token, vectors), layout = next(iter(tensors.items())), "diffusers"
    if not isinstance(vectors, torch.Tensor):
        raise UserError(f"{path}: the embedding is a {type(vectors).__name__}, not a tensor")
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2:
        raise UserError(f"{path}: embedding has shape {tuple(vectors.shape)}; expected [num_vectors, dim]")
    if expected_dim is not None and vectors.shape[1] != expected_dim:
        raise UserError(f"{path}: embedding dimension {vectors.shape[1]} does not match this model's text encoder "
                        f"({expected_dim}); it was trained for another model (768 = SD 1.x, 1024 = SD 2.x)")
    return LoadedEmbedding(token, vectors.float(), layout, path)
