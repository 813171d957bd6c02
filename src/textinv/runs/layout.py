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
the same layout under snapshots/ with a `-step000500` suffix.
"""

from __future__ import annotations

from pathlib import Path

from textinv.methods.textual_inversion.formats import save_a1111, save_diffusers, save_kohya, save_sdxl

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


def write_embedding_files(folder: Path, module, step: int, suffix: str = "") -> list[Path]:
    """The files of the module's model family (its root file first)."""
    return module.family.write_files(Path(folder), module.placeholder, module.vectors.detach(), module.widths, step,
                                     module.model_name, suffix)


def write_sd_files(folder: Path, ph, vectors, step: int, model_name: str, suffix: str = "") -> list[Path]:
    """SD 1.x/2.x: the universal .pt first, then the diffusers and pickle-free safetensors files."""
    return [
        save_a1111(universal_file(folder, ph.name, suffix), ph.token, vectors, step=step,
                   sd_checkpoint_name=model_name),
        save_diffusers(diffusers_file(folder, suffix), ph.token, vectors),
        save_kohya(Path(folder) / SAFETENSORS_DIR / f"{ph.name}{suffix}.safetensors", vectors),
    ]


def write_sdxl_files(folder: Path, ph, clip_l, clip_g, suffix: str = "") -> list[Path]:
    """SDXL: the {clip_l, clip_g} file named after the token first, then diffusers' pair."""
    return [
        save_sdxl(Path(folder) / f"{ph.name}{suffix}.safetensors", clip_l, clip_g),
        save_diffusers(diffusers_file(folder, suffix), ph.token, clip_l),
        save_diffusers(diffusers_file(folder, suffix, second=True), ph.token, clip_g),
    ]
