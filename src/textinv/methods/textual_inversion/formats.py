"""Embedding files other tools read. Loading never unpickles code.

Layouts:
- diffusers: {token: [n, dim]} (safetensors, fp32, one key); SDXL: a pair of such files,
  `learned_embeds.safetensors` (text_encoder, 768) and `learned_embeds_2.safetensors` (text_encoder_2, 1280)
- AUTOMATIC1111 `.pt`: {"string_to_token": {"*": 265}, "string_to_param": {"*": [n, dim]}, "name", "step",
  "sd_checkpoint", "sd_checkpoint_name"}
- kohya sd-scripts: {"emb_params": [n, dim]}; SDXL: {"clip_l": [n, 768], "clip_g": [n, 1280]}

What each tool's loading code demands of a file (read from their sources; the tests re-check each rule):
- AUTOMATIC1111 v1.10, `modules/safe.py`: a `.pt` zip may only hold entries matching
  `^([^/]+)/((data/\\d+)|version|byteorder|.data/serialization_id|(data\\.pkl))$` (older releases:
  `data/N`, `version`, `data.pkl` only) and its pickle may only name a short list of globals
  (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`, ...). Today's torch
  also writes `.format_version` and `.storage_alignment`, so a plain torch.save file is refused; we keep
  only `data.pkl`, `data/N` and `version`, which every release accepts and torch still loads.
  `modules/textual_inversion/textual_inversion.py` (`load_from_file`): the name is the file stem;
  `.safetensors` must be `clip_g` + `clip_l` or exactly one tensor (a flat file cannot hold `string_to_param`).
- ComfyUI `comfy/sd1_clip.py` (`load_embed`): `embedding:<stem>` tries `.safetensors`, then `.pt`, then
  `.bin`, so a same-stem `.pt` beside a `.safetensors` is silently shadowed; `.pt` via
  `torch.load(weights_only=True)`; takes `string_to_param`, else the encoder's key (`clip_l`/`clip_g`),
  else the first tensor.
- kohya `gen_img.py` / `gen_img_diffusers.py`: the token is the file stem (`stem`, `stem1`, `stem2`... for
  n vectors, n = first axis, so vectors stay 2-D); unwraps `string_to_param`, then takes the first tensor;
  two files with one stem fail its "tokenizer has same word" assertion.
- InvokeAI `invokeai/backend/model_manager/configs/textual_inversion.py` (`_get_base_or_raise`): the width
  comes from `string_to_param` (when `string_to_token` is present), `emb_params` or `clip_g`, else from the
  FIRST axis of the first tensor, so diffusers' {token: [n, 768]} is refused; `model_on_disk.py`: the name
  is the stem and a `.pt` must pass picklescan.
- diffusers `src/diffusers/loaders/textual_inversion.py` (`_retrieve_tokens_and_embeddings`): a one-key file
  registers its key; else `string_to_param["*"]` under `name`; `.pt` read with `torch.load(weights_only=True)`.

So one file satisfies all five: the A1111 `.pt` named `<stem>.pt` with `name` = the token (`<deku-tree>`:
diffusers registers it; the others use the stem `deku-tree`), written as the trimmed zip above. No flat
`.safetensors` can: diffusers needs the token as the key, InvokeAI then reads n as the width.
`{"emb_params": ...}` is the pickle-free one that A1111, ComfyUI, kohya and InvokeAI name by the stem.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from textinv.utils.atomic import atomic_write
from textinv.errors import UserError

A1111_STAR_TOKEN = 265  # the id A1111 records for "*"; informational only
# The torch zip entries every AUTOMATIC1111 release's safe-unpickling check accepts.
A1111_SAFE_ENTRIES = re.compile(r"^[^/]+/(data\.pkl|data/\d+|version)$")
_ALIGN = 64  # torch aligns tensor data to 64 bytes in its zips (mmap loading); keep that
KOHYA_KEY = "emb_params"
SD_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x"}
SDXL_WIDTHS = {"clip_l": 768, "clip_g": 1280}


@dataclass
class LoadedEmbedding:
    token: str | None  # the placeholder the file names (None when the layout carries no name)
    vectors: torch.Tensor  # [num_vectors, dim], fp32 (SDXL: the clip_l half)
    layout: str  # diffusers | a1111 | kohya | sdxl
    path: Path
    vectors_g: torch.Tensor | None = None  # SDXL only: the clip_g half [num_vectors, 1280]


def _fp32(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.detach().float().cpu().contiguous().clone()


def save_diffusers(path: Path, token: str, vectors: torch.Tensor) -> Path:
    tensors = {token: _fp32(vectors)}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def save_kohya(path: Path, vectors: torch.Tensor) -> Path:
    """{"emb_params": [n, dim]}: named after the file stem by A1111, ComfyUI, kohya and InvokeAI."""
    return _save_tensors(path, {KOHYA_KEY: _fp32(vectors)})


def save_sdxl(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    """kohya/A1111 SDXL layout {"clip_l": [n, 768], "clip_g": [n, 1280]}."""
    return _save_tensors(path, {"clip_l": _fp32(clip_l), "clip_g": _fp32(clip_g)})


def _save_tensors(path: Path, tensors: dict) -> Path:
    if Path(path).suffix == ".pt":
        return atomic_write(path, lambda p: p.write_bytes(a1111_safe_torch_bytes(tensors)))
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def save_a1111(path: Path, name: str, vectors: torch.Tensor, step: int = 0, sd_checkpoint: str | None = None,
               sd_checkpoint_name: str | None = None) -> Path:
    """A1111 layout; `name` is what diffusers registers (the other tools use the file stem)."""
    data = {
        "string_to_token": {"*": A1111_STAR_TOKEN},
        "string_to_param": {"*": _fp32(vectors)},
        "name": name,
        "step": int(step),
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
    }
    return atomic_write(path, lambda p: p.write_bytes(a1111_safe_torch_bytes(data)))


def a1111_safe_torch_bytes(obj) -> bytes:
    """torch.save's zip with only the entries A1111's safe check allows (see the module docstring).

    Dropped: `.format_version`, `.storage_alignment` (torch falls back to its defaults), `byteorder`
    (torch then reads little-endian, which is what we write) and `.data/serialization_id`.
    """
    saved = io.BytesIO()
    torch.save(obj, saved)
    out = io.BytesIO()
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for entry in src.infolist():
            if not A1111_SAFE_ENTRIES.match(entry.filename):
                continue
            info = zipfile.ZipInfo(entry.filename, date_time=(1980, 1, 1, 0, 0, 0))
            # pad the local header's extra field so the data starts on a 64-byte boundary, as torch does
            data_start = out.tell() + 30 + len(entry.filename.encode()) + 4
            pad = -data_start % _ALIGN
            info.extra = b"FB" + pad.to_bytes(2, "little") + b"\0" * pad
            dst.writestr(info, src.read(entry))
    return out.getvalue()


def _read(path: Path) -> dict:
    from textinv.validation import check_file_size

    if path.is_dir():
        raise UserError(f"embedding file {path} is a folder; give the embedding file itself (a run's <name>.pt)")
    if not path.is_file():
        raise UserError(f"embedding file {path} does not exist")
    check_file_size(path, "embedding", "give an embedding file (a run's <name>.pt or a .safetensors of a few KB)")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ValueError, ...
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"{path} is not a readable safetensors file ({first})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(f"refused to load {path}: it holds Python objects beyond tensors, which could run code "
                        "(only plain tensor files are loaded; ask for a .safetensors file)") from err
    except Exception as err:  # noqa: BLE001 - a damaged file makes torch raise almost anything (IndexError, ...)
        raise UserError(f"{path} is not a readable torch embedding file ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from err


def _as_matrix(path: Path, vectors, what: str = "the embedding") -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor):
        raise UserError(f"{path}: {what} is a {type(vectors).__name__}, not a tensor")
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2:
        raise UserError(f"{path}: {what} has shape {tuple(vectors.shape)}; expected [num_vectors, dim]")
    if vectors.numel() == 0:
        raise UserError(f"{path}: {what} is empty (shape {tuple(vectors.shape)}); expected [num_vectors, dim]")
    if not vectors.is_floating_point():
        raise UserError(f"{path}: {what} holds {vectors.dtype} values; expected floating-point vectors")
    if not torch.isfinite(vectors).all():  # NaN/inf vectors give black or noise images, silently
        bad = int((~torch.isfinite(vectors)).sum())
        raise UserError(f"{path}: {what} holds {bad} NaN/inf value(s); it comes from a diverged run, use an "
                        "earlier snapshot or the -last-good file")
    return vectors.float()


def read_embedding(path: str | Path) -> LoadedEmbedding:
    """Any of the layouts, SDXL included; reports unknown layouts and several tokens."""
    path = Path(path)
    data = _read(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise UserError(f"{path}: A1111 file with {len(params) if isinstance(params, dict) else 0} tokens; "
                            "expected exactly one")
        token, vectors, layout = data.get("name") or path.stem, next(iter(params.values())), "a1111"
    elif KOHYA_KEY in data:
        token, vectors, layout = None, data[KOHYA_KEY], "kohya"
    elif "clip_l" in data or "clip_g" in data:
        if set(data) != {"clip_l", "clip_g"}:
            raise UserError(f"{path}: SDXL embedding with keys {sorted(map(str, data))}; expected clip_l and clip_g")
        clip_l, clip_g = (_as_matrix(path, data[k], k) for k in ("clip_l", "clip_g"))
        if clip_l.shape[0] != clip_g.shape[0]:
            raise UserError(f"{path}: clip_l has {clip_l.shape[0]} vectors and clip_g {clip_g.shape[0]}; "
                            "expected the same count")
        return LoadedEmbedding(None, clip_l, "sdxl", path, vectors_g=clip_g)
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1 or len(tensors) != len(data):
            raise UserError(f"{path}: unknown embedding layout with keys {sorted(map(str, data))[:6]}; expected "
                            "diffusers {token: tensor}, A1111 string_to_param, kohya emb_params or SDXL clip_l/clip_g")
        (token, vectors), layout = next(iter(tensors.items())), "diffusers"
    return LoadedEmbedding(token, _as_matrix(path, vectors), layout, path)


def load_embedding(path: str | Path, expected_dim: int | None = None) -> LoadedEmbedding:
    """One text encoder's embedding (SD 1.x/2.x); checks the width against the model when given."""
    emb = read_embedding(path)
    if emb.layout == "sdxl":
        raise UserError(f"{emb.path} is an SDXL embedding (clip_l/clip_g) and this is an SD 1.x/2.x model; use it "
                        "with an SDXL model (model=sdxl)")
    if expected_dim is not None and emb.vectors.shape[1] != expected_dim:
        raise UserError(f"{emb.path}: embedding dimension {emb.vectors.shape[1]} does not match this model's text "
                        f"encoder ({expected_dim}); it was trained for another model (768 = SD 1.x, 1024 = SD 2.x)")
    return emb


PAIR = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")  # diffusers' SDXL files


def second_of_pair(path: Path) -> Path | None:
    """`learned_embeds[-suffix].safetensors` -> its `learned_embeds_2[-suffix].safetensors` sibling."""
    stem = PAIR[0].removesuffix(".safetensors")
    if not path.name.startswith(stem) or path.name.startswith(stem + "_2"):
        return None
    return path.with_name(path.name.replace(stem, stem + "_2", 1))


def read_pair(first: Path, second: Path, where: Path) -> LoadedEmbedding:
    emb, emb_g = read_embedding(first), read_embedding(second)
    if emb.token != emb_g.token or emb.layout != "diffusers" or emb_g.layout != "diffusers":
        raise UserError(f"{where}: {first.name} ({emb.token}) and {second.name} ({emb_g.token}) are not one SDXL token")
    if emb.vectors.shape[0] != emb_g.vectors.shape[0]:
        raise UserError(f"{where}: the two encoders' files hold {emb.vectors.shape[0]} and {emb_g.vectors.shape[0]} "
                        "vectors; expected the same count")
    return LoadedEmbedding(emb.token, emb.vectors, "sdxl", where, vectors_g=emb_g.vectors)


def read_sdxl_embedding(path: str | Path) -> LoadedEmbedding:
    """An SDXL embedding: a {clip_l, clip_g} file, diffusers' pair folder, or the pair's first file."""
    path = Path(path)
    if path.is_dir():
        if not (path / PAIR[0]).is_file() or not (path / PAIR[1]).is_file():
            raise UserError(f"{path} is a folder without diffusers' SDXL pair ({PAIR[0]}, {PAIR[1]}); give the "
                            "pair's folder or the {clip_l, clip_g} file")
        return read_pair(path / PAIR[0], path / PAIR[1], path)
    second = second_of_pair(path)
    if second is not None and path.is_file() and second.is_file():
        return read_pair(path, second, path)
    emb = read_embedding(path)
    if emb.layout != "sdxl":
        raise UserError(f"{path} holds one text encoder's embedding ({emb.vectors.shape[1]} wide) and SDXL has two; "
                        "give the {clip_l, clip_g} file (<name>.safetensors of an SDXL run) or diffusers' pair folder")
    return emb
