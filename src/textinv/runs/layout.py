"""Where a run's embedding files go (README "Using the embedding in other tools").

    <run>/<name>.pt                              the one file for every tool (AUTOMATIC1111, ComfyUI, kohya,
                                                 InvokeAI, diffusers): A1111 layout, `name` = the token
    <run>/diffusers/learned_embeds.safetensors   diffusers' own layout {token: [n, dim]}; what this project reads
    <run>/safetensors/<name>.safetensors         pickle-free {"emb_params": [n, dim]} (A1111, ComfyUI, kohya,
                                                 InvokeAI; diffusers needs token=)

SDXL runs (two text encoders; textinv.models.family.sdxl) write instead:

    <run>/<name>.safetensors                     {"clip_l": [n, 768], "clip_g": [n, 1280]}: AUTOMATIC1111,
                                                 ComfyUI, kohya and InvokeAI read it, named after the file
    <run>/diffusers/learned_embeds.safetensors   diffusers' pair {token: [n, 768]} (text_encoder) and
    <run>/diffusers/learned_embeds_2.safetensors {token: [n, 1280]} (text_encoder_2): two load_textual_inversion calls

The root holds one embedding file only: these tools scan a whole folder and name embeddings after file
stems, so a second root file would either share the stem (ComfyUI shadows it, kohya fails) or add a second
name, and InvokeAI refuses the diffusers layout outright (formats.py has the sources' rules). Snapshots use
the same layout under snapshots/ with a `-step000500` suffix. The files are written by the training
method (textinv.methods.textual_inversion.families); the names are this module's.
"""

from __future__ import annotations

from pathlib import Path

DIFFUSERS_DIR = "diffusers"
DIFFUSERS_FILE = "learned_embeds.safetensors"
DIFFUSERS_FILE_2 = "learned_embeds_2.safetensors"  # SDXL: the second text encoder's half
SAFETENSORS_DIR = "safetensors"


def diffusers_file(folder: str | Path, suffix: str = "", second: bool = False) -> Path:
    """The diffusers-layout file this project itself reads back (generation, evaluation, tests)."""
    name = DIFFUSERS_FILE_2 if second else DIFFUSERS_FILE
    return Path(folder) / DIFFUSERS_DIR / name.replace(".safetensors", f"{suffix}.safetensors")


def universal_file(folder: str | Path, name: str, suffix: str = "") -> Path:
    return Path(folder) / f"{name}{suffix}.pt"


def kohya_file(folder: str | Path, name: str, suffix: str = "") -> Path:
    """The pickle-free {"emb_params": ...} file (SD 1.x/2.x runs)."""
    return Path(folder) / SAFETENSORS_DIR / f"{name}{suffix}.safetensors"


def sdxl_file(folder: str | Path, name: str, suffix: str = "") -> Path:
    """SDXL runs' root file {"clip_l", "clip_g"}, named after the token."""
    return Path(folder) / f"{name}{suffix}.safetensors"


def hypernetwork_file(folder: str | Path, name: str, suffix: str = "") -> Path:
    """A hypernetwork run's root file: AUTOMATIC1111's `.pt` layout, which ComfyUI reads too."""
    return Path(folder) / f"{name}{suffix}.pt"


def hypernetwork_safetensors_file(folder: str | Path, name: str, suffix: str = "") -> Path:
    """Its pickle-free copy (this project's safetensors layout; see textinv.methods.hypernetwork.files)."""
    return Path(folder) / SAFETENSORS_DIR / f"{name}{suffix}.safetensors"
