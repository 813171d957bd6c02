"""Where a run's embedding files go (README "Using the embedding in other tools").

    <run>/<name>.pt                              the one file for every tool (AUTOMATIC1111, ComfyUI, kohya,
                                                 InvokeAI, diffusers): A1111 layout, `name` = the token
    <run>/diffusers/learned_embeds.safetensors   diffusers' own layout {token: [n, dim]}; what this project reads
    <run>/safetensors/<name>.safetensors         pickle-free {"emb_params": [n, dim]} (A1111, ComfyUI, kohya,
                                                 InvokeAI; diffusers needs token=)

The root holds one embedding file only: these tools scan a whole folder and name embeddings after file
stems, so a second root file would either share the stem (ComfyUI shadows it, kohya fails) or add a second
name, and InvokeAI refuses the diffusers layout outright (formats.py has the sources' rules). Snapshots use
the same layout under snapshots/ with a `-step000500` suffix.
"""

from __future__ import annotations

from pathlib import Path

from .formats import save_a1111, save_diffusers, save_kohya

DIFFUSERS_DIR = "diffusers"
DIFFUSERS_FILE = "learned_embeds.safetensors"
SAFETENSORS_DIR = "safetensors"


def diffusers_file(folder: str | Path, suffix: str = "") -> Path:
    """The diffusers-layout file this project itself reads back (generation, evaluation, tests)."""
    return Path(folder) / DIFFUSERS_DIR / DIFFUSERS_FILE.replace(".safetensors", f"{suffix}.safetensors")


def universal_file(folder: str | Path, name: str, suffix: str = "") -> Path:
    return Path(folder) / f"{name}{suffix}.pt"


def write_embedding_files(folder: Path, module, step: int, suffix: str = "") -> list[Path]:
    """The universal .pt first, then the diffusers and pickle-free safetensors files."""
    ph, vectors = module.placeholder, module.vectors
    return [
        save_a1111(universal_file(folder, ph.name, suffix), ph.token, vectors, step=step,
                   sd_checkpoint_name=module.model_name),
        save_diffusers(diffusers_file(folder, suffix), ph.token, vectors),
        save_kohya(Path(folder) / SAFETENSORS_DIR / f"{ph.name}{suffix}.safetensors", vectors),
    ]
