"""Each tool's documented rule for loading an embedding folder, restated as a check (facts from their sources;
see src/textinv/formats.py). Each `*_folder` returns {name the prompt uses: vectors} or raises ToolRefused
with the tool's reason. None of this imports or copies the tools' code.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

EXTENSIONS = (".safetensors", ".pt", ".bin")


class ToolRefused(Exception):
    pass


def embedding_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in EXTENSIONS)


# --- AUTOMATIC1111 v1.10: modules/safe.py + modules/textual_inversion/textual_inversion.py ----------
A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
A1111_ZIP_NAMES_OLD = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")  # releases before byteorder
A1111_GLOBALS = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                 ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_device_tensor_from_numpy"),
                 ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "IntStorage"),
                 ("torch", "LongStorage"), ("torch", "DoubleStorage"), ("torch", "ByteStorage"),
                 ("torch", "float32"), ("torch", "BFloat16Storage"), ("__builtin__", "set")}


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves nothing: records each global and refuses those outside A1111's list."""

    def find_class(self, module, name):
        if (module, name) not in A1111_GLOBALS:
            raise ToolRefused(f"global '{module}/{name}' is forbidden")
        return lambda *args, **kwargs: None

    def persistent_load(self, saved_id):
        if saved_id[0] != "storage":
            raise ToolRefused("persistent id is not a storage")


def a1111_safe_check(path: Path) -> None:
    """safe.py's check_pt: zip entry names, then the pickle's globals (the legacy non-zip branch too)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            for pattern in (A1111_ZIP_NAMES, A1111_ZIP_NAMES_OLD):
                bad = [n for n in names if not pattern.match(n)]
                if bad:
                    raise ToolRefused(f"bad file inside {path.name}: {bad[0]} (may be malicious)")
            pkl = [n for n in names if re.match(r"^([^/]+)/data\.pkl$", n)]
            if len(pkl) != 1:
                raise ToolRefused(f"{len(pkl)} data.pkl in {path.name}")
            _AllowListUnpickler(io.BytesIO(z.read(pkl[0]))).load()
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            unpickler = _AllowListUnpickler(f)
            for _ in range(5):
                unpickler.load()


def a1111_folder(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for path in embedding_files(folder):
        name = path.stem  # load_from_file: the file name without extension
        if path.suffix == ".safetensors":
            data = load_file(str(path))
        else:
            a1111_safe_check(path)
            data = torch.load(path, map_location="cpu", weights_only=False)  # what A1111 does once checked
        if "string_to_param" in data:
            params = data["string_to_param"]
            if len(params) != 1:
                raise ToolRefused("embedding file has multiple terms in it")
            vec = next(iter(params.values()))
        elif "clip_g" in data and "clip_l" in data:
            raise ToolRefused("SDXL embedding: skipped by an SD 1.x model")
        elif isinstance(next(iter(data.values())), torch.Tensor):
            if len(data) != 1:
                raise ToolRefused("embedding file has multiple terms in it")
            vec = next(iter(data.values()))
        else:
            raise ToolRefused(f"Couldn't identify {path.name}")
        vec = vec.unsqueeze(0) if vec.ndim == 1 else vec
        if name in found:
            raise ToolRefused(f"two files named {name}")
        found[name] = vec.float()
    return found


# --- ComfyUI: comfy/sd1_clip.py load_embed ---------------------------------------------------------
def comfyui_embedding(folder: Path, name: str, embed_key: str = "clip_l") -> torch.Tensor | None:
    """`embedding:<name>`: the exact file, else <name>.safetensors, .pt, .bin in that order."""
    path = folder / name
    if not path.is_file():
        path = next((folder / f"{name}{ext}" for ext in EXTENSIONS if (folder / f"{name}{ext}").is_file()), None)
    if path is None:
        return None
    if path.suffix == ".safetensors":
        data = load_file(str(path))
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # ComfyUI then falls back to reading raw floats out of the zip: a guess
            raise ToolRefused(f"weights_only load failed: {err}") from err
    if "string_to_param" in data:
        return next(iter(data["string_to_param"].values()))
    if embed_key in data:
        return data[embed_key]
    return next(iter(data.values()))


def comfyui_folder(folder: Path) -> dict[str, torch.Tensor]:
    stems = [p.stem for p in embedding_files(folder)]
    shadowed = {s for s in stems if stems.count(s) > 1}
    if shadowed:  # embedding:<stem> reaches only the first extension: the other file is silently unused
        raise ToolRefused(f"same stem twice, one file shadowed: {sorted(shadowed)}")
    return {s: comfyui_embedding(folder, s) for s in stems}


# --- kohya sd-scripts: gen_img.py / gen_img_diffusers.py ----------------------------------------------
def kohya_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every file passed with --textual_inversion_embeddings; tokens `stem`, `stem1`, ... per vector."""
    added: set[str] = set()
    found = {}
    for path in embedding_files(folder):
        data = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
        if "string_to_param" in data:
            data = data["string_to_param"]
        embeds = next(iter(data.values()))
        if not isinstance(embeds, torch.Tensor):
            raise ToolRefused("weight file does not contain a Tensor")
        stem = path.stem
        tokens = [stem] + [f"{stem}{i + 1}" for i in range(embeds.size()[0] - 1)]
        if added & set(tokens):
            raise ToolRefused(f"tokenizer has same word to token string (filename): {path.name}")
        added |= set(tokens)
        found[stem] = embeds
    return found


# --- InvokeAI: model_manager/configs/textual_inversion.py + model_on_disk.py ------------------------------
INVOKEAI_WIDTHS = {768: "sd-1", 1024: "sd-2", 1280: "sdxl"}


def invokeai_width(data: dict) -> int:
    """_get_base_or_raise: which axis holds the width depends on the keys."""
    if "string_to_token" in data:
        return list(data["string_to_param"].values())[0].shape[-1]
    if "emb_params" in data:
        return data["emb_params"].shape[-1]
    if "clip_g" in data:
        return data["clip_g"].shape[-1]
    return list(data.values())[0].shape[0]  # the first axis: n for a [n, dim] diffusers file


def invokeai_folder(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for path in embedding_files(folder):
        if path.suffix == ".safetensors":
            data = load_file(str(path))
        else:
            a1111_safe_check(path)  # stands in for picklescan: a stricter list of globals
            data = torch.load(path, map_location="cpu")
        width = invokeai_width(data)
        if width not in INVOKEAI_WIDTHS:
            raise ToolRefused(f"{path.name}: unrecognized token dimension {width}")
        if "string_to_param" in data:
            emb = next(iter(data["string_to_param"].values()))
        elif "emb_params" in data:
            emb = data["emb_params"]
        else:
            emb = next(iter(data.values()))
        found[path.stem] = emb.unsqueeze(0) if emb.ndim == 1 else emb
    return found


# --- diffusers: loaders/textual_inversion.py _retrieve_tokens_and_embeddings --------------------------------
def diffusers_token(data: dict) -> tuple[str, torch.Tensor]:
    if len(data) == 1:
        return next(iter(data.items()))
    if "string_to_param" in data:
        return data["name"], data["string_to_param"]["*"]
    raise ToolRefused("Loaded state dictionary is incorrect")


def diffusers_folder(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for path in embedding_files(folder):
        data = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        token, emb = diffusers_token(data)
        if token in found:
            raise ToolRefused(f"Token {token} already in tokenizer vocabulary")
        found[token] = emb
    return found


TOOLS = {"automatic1111": a1111_folder, "comfyui": comfyui_folder, "kohya": kohya_folder,
         "invokeai": invokeai_folder, "diffusers": diffusers_folder}


# === The same tools with an SDXL model loaded: each returns {name: (clip_l [n, 768], clip_g [n, 1280])} ========
SDXL_WIDTHS = (768, 1280)


def _read_any(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    a1111_safe_check(path)
    return torch.load(path, map_location="cpu", weights_only=False)


def a1111_sdxl_folder(folder: Path, widths=SDXL_WIDTHS) -> dict:
    """create_embedding_from_data: clip_g + clip_l -> shape = their widths summed; a file whose shape is not the
    loaded model's (768 + 1280 for SDXL) is skipped (load_from_dir's expected_shape check)."""
    found = {}
    for path in embedding_files(folder):
        data = _read_any(path)
        if "string_to_param" in data:
            vec, shape = next(iter(data["string_to_param"].values())), None
            shape = vec.shape[-1]
        elif isinstance(data, dict) and "clip_g" in data and "clip_l" in data:
            vec, shape = {k: v.float() for k, v in data.items()}, data["clip_g"].shape[-1] + data["clip_l"].shape[-1]
        elif len(data) == 1:
            vec = next(iter(data.values()))
            shape = vec.shape[-1]
        else:
            raise ToolRefused(f"Couldn't identify {path.name}")
        if shape != sum(widths):
            continue  # skipped: "shape mismatch" with the loaded model
        found[path.stem] = (vec["clip_l"], vec["clip_g"])
    return found


def comfyui_sdxl_folder(folder: Path, widths=SDXL_WIDTHS) -> dict:
    """SDXL's two CLIP models each call load_embed with their own key (clip_l, clip_g); a wrong width is ignored
    with a shape-mismatch warning."""
    stems = [p.stem for p in embedding_files(folder)]
    if len(set(stems)) != len(stems):
        raise ToolRefused("same stem twice, one file shadowed")
    found = {}
    for stem in stems:
        halves = tuple(comfyui_embedding(folder, stem, key) for key in ("clip_l", "clip_g"))
        if tuple(h.shape[-1] for h in halves) != tuple(widths):
            raise ToolRefused(f"{stem}: shape mismatch when trying to apply embedding, embedding will be ignored")
        found[stem] = halves
    return found


def kohya_sdxl_folder(folder: Path) -> dict:
    """sdxl_gen_img.py: string_to_param unwrapped, then data["clip_l"] and data["clip_g"]; tokens stem, stem1..."""
    found, added = {}, set()
    for path in embedding_files(folder):
        data = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
        if "string_to_param" in data:
            data = data["string_to_param"]
        if "clip_l" not in data or "clip_g" not in data:
            raise ToolRefused(f"KeyError: 'clip_l' in {path.name}")
        tokens = [path.stem] + [f"{path.stem}{i + 1}" for i in range(data["clip_l"].size()[0] - 1)]
        if added & set(tokens):
            raise ToolRefused(f"tokenizer has same word to token string (filename): {path.name}")
        added |= set(tokens)
        found[path.stem] = (data["clip_l"], data["clip_g"])
    return found


def invokeai_sdxl_folder(folder: Path) -> dict:
    """The probe's width (clip_g's: 1280 = sdxl), then the v5 branch: embedding = clip_g, embedding_2 = clip_l."""
    found = {}
    for path in embedding_files(folder):
        data = _read_any(path)
        if INVOKEAI_WIDTHS.get(invokeai_width(data)) != "sdxl":
            raise ToolRefused(f"{path.name}: not an SDXL embedding for InvokeAI (width {invokeai_width(data)})")
        if "clip_g" not in data or "clip_l" not in data:
            raise ToolRefused(f"{path.name}: no clip_l/clip_g pair")
        found[path.stem] = (data["clip_l"], data["clip_g"])
    return found


SDXL_TOOLS = {"automatic1111": a1111_sdxl_folder, "comfyui": comfyui_sdxl_folder, "kohya": kohya_sdxl_folder,
              "invokeai": invokeai_sdxl_folder}


# --- Hypernetworks: AUTOMATIC1111 v1.10.1 modules/hypernetworks/hypernetwork.py, ComfyUI nodes_hypernetwork.py ---
# Each returns {width: (key transform, value transform)}, each transform x -> x + mlp(x) * multiplier, rebuilt by
# that tool's rule from the file alone (restated from their sources; none of their code is used).
HN_ACTIVATIONS_COMFYUI = {"linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU,
                          "elu": torch.nn.ELU, "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh,
                          "sigmoid": torch.nn.Sigmoid, "softsign": torch.nn.Softsign, "mish": torch.nn.Mish}


def _a1111_activation(name):
    """AUTOMATIC1111: its named ones plus every torch.nn activation class by lower-cased name."""
    import inspect

    table = {n.lower(): c for n, c in inspect.getmembers(torch.nn.modules.activation, inspect.isclass)
             if c.__module__ == "torch.nn.modules.activation"}
    table.update({"linear": torch.nn.Identity, "swish": torch.nn.Hardswish})
    if name not in table:
        raise ToolRefused(f"unsupported activation function: {name}")
    return table[name]


def _residual(seq, multiplier):
    return lambda x: x + seq(x) * multiplier


def a1111_hypernetwork(path: Path, multiplier: float = 1.0) -> dict:
    """Listed only as **/*.pt; loaded through the safe check; integer keys only; modules built from the metadata
    (missing activate_output means True, missing dropout structure derived from use_dropout) and loaded strictly."""
    if path.suffix != ".pt":
        raise ToolRefused(f"{path.name}: AUTOMATIC1111 lists hypernetworks as *.pt only")
    a1111_safe_check(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    structure = sd.get("layer_structure", [1, 2, 1])
    activation = sd.get("activation_func", None)
    layer_norm = sd.get("is_layer_norm", False)
    activate_output = sd.get("activate_output", True)
    dropouts = sd.get("dropout_structure", None)
    if dropouts is None:
        use, last = sd.get("use_dropout", False), sd.get("last_layer_dropout", False)
        n = len(structure)
        dropouts = [0] * n if not use else [0] + [0.3] * (n - 3) + [0.3 if last else 0] + [0]
    out = {}
    for width, pair in sd.items():
        if type(width) is not int:
            continue
        transforms = []
        for state in pair:
            layers = []
            for i in range(len(structure) - 1):
                layers.append(torch.nn.Linear(int(width * structure[i]), int(width * structure[i + 1])))
                if not (activation in ("linear", None) or (i >= len(structure) - 2 and not activate_output)):
                    layers.append(_a1111_activation(activation)())
                if layer_norm:
                    layers.append(torch.nn.LayerNorm(int(width * structure[i + 1])))
                if dropouts[i + 1] > 0:
                    layers.append(torch.nn.Dropout(p=dropouts[i + 1]))
            seq, holder = torch.nn.Sequential(*layers), torch.nn.Module()
            holder.linear = seq  # its module names its Sequential `linear`, and loads strictly
            holder.load_state_dict(dict(state), strict=True)
            transforms.append(_residual(seq.eval(), multiplier))
        out[width] = tuple(transforms)
    return out


def comfyui_hypernetwork(path: Path, strength: float = 1.0) -> dict:
    """torch.load(weights_only=True); keys that int() accepts; per module, the `.weight` keys in dict order are
    its layers: a Linear each, the activation unless 'linear' (after the last entry only with activate_output,
    missing meaning False), the next entry taken as LayerNorm when is_layer_norm, Dropout(0.3) by its own rule
    (never put in eval mode). Unsupported activation: logged, no hypernetwork."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    activation = sd.get("activation_func", "linear")
    if activation not in HN_ACTIVATIONS_COMFYUI:
        raise ToolRefused(f"unsupported hypernetwork activation {activation}")
    layer_norm, use_dropout = sd.get("is_layer_norm", False), sd.get("use_dropout", False)
    activate_output, last_dropout = sd.get("activate_output", False), sd.get("last_layer_dropout", False)
    out = {}
    for key in sd:
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue
        transforms = []
        for state in sd[key]:
            names = [k[: -len(".weight")] for k in state if k.endswith(".weight")]
            layers, i = [], 0
            while i < len(names):
                last, penultimate = i == len(names) - 1, i == len(names) - 2
                w, b = state[f"{names[i]}.weight"], state[f"{names[i]}.bias"]
                lin = torch.nn.Linear(w.shape[1], w.shape[0])
                lin.load_state_dict({"weight": w, "bias": b})
                layers.append(lin)
                if activation != "linear" and (not last or activate_output):
                    layers.append(HN_ACTIVATIONS_COMFYUI[activation]())
                if layer_norm:
                    i += 1
                    w, b = state[f"{names[i]}.weight"], state[f"{names[i]}.bias"]
                    ln = torch.nn.LayerNorm(w.shape[0])
                    ln.load_state_dict({"weight": w, "bias": b})
                    layers.append(ln)
                if use_dropout and not last and (not penultimate or last_dropout):
                    layers.append(torch.nn.Dropout(p=0.3))
                i += 1
            transforms.append(_residual(torch.nn.Sequential(*layers), strength))
        out[width] = tuple(transforms)
    return out
