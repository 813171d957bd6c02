"""Every path and file name inside a run folder, for the code that writes it and the code that reads it.

    <run>/config.yaml                            the resolved config (written before training)
    <run>/run.json                               the finished-run marker, written last
    <run>/checkpoints/last.ckpt                  Lightning checkpoints (last.ckpt: what a re-run resumes)
    <run>/snapshots/                             embedding files every N steps, `-step000500` suffix
    <run>/eval/metrics.json                      every evaluation record (what tables read)
    <run>/eval/images/<folder>/pNN-KKK.png       image k of prompt p (seed eval.seed + k), prompts.json beside;
                                                 <folder>: stepNNNNNN[-light] or baseline[-light]
generate.py's output folder uses the same image naming with four digits (KKKK.png for one prompt,
pNN-KKKK.png for several); `parse_image_name` reads both.

Where a run's embedding files go (README "Using the embedding in other tools"):

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

import re
from pathlib import Path

from textinv.evaluation.schedule import FULL

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
    """A hypernetwork run's root file (AUTOMATIC1111's `.pt` layout, which ComfyUI reads too): the same place as an
    embedding run's root file."""
    return universal_file(folder, name, suffix)


def hypernetwork_safetensors_file(folder: str | Path, name: str, suffix: str = "") -> Path:
    """Its pickle-free copy (textinv.methods.hypernetwork.files), where embedding runs keep theirs."""
    return kohya_file(folder, name, suffix)


# --- the run folder ----------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
FINISHED_MARKER = "run.json"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
SNAPSHOTS_DIR = "snapshots"
EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
METRICS_PATH = Path(EVAL_DIR) / METRICS_FILE  # relative to the run folder (messages, searches)
IMAGES_DIR = "images"
PROMPTS_FILE = "prompts.json"  # beside the images: the prompt templates, p00 first
ATTRIBUTES_FILE = "attributes.json"  # eval/: the toy world's attribute rates (python -m textinv toyworld attributes)
EVAL_IMAGE_DIGITS = 3  # eval/images: pNN-KKK.png
GENERATE_IMAGE_DIGITS = 4  # generate.py: KKKK.png, pNN-KKKK.png
IMAGE_NAME = re.compile(r"^(?:p(?P<p>\d{2,})-)?(?P<k>\d+)\.png$")


def config_file(run: str | Path) -> Path:
    return Path(run) / CONFIG_FILE


def finished_marker(run: str | Path) -> Path:
    return Path(run) / FINISHED_MARKER


def checkpoints_dir(run: str | Path) -> Path:
    return Path(run) / CHECKPOINTS_DIR


def last_checkpoint(run: str | Path) -> Path:
    return checkpoints_dir(run) / LAST_CHECKPOINT


def snapshots_dir(run: str | Path) -> Path:
    return Path(run) / SNAPSHOTS_DIR


def snapshot_suffix(step: int) -> str:
    return f"-step{step:06d}"


def eval_dir(run: str | Path) -> Path:
    return Path(run) / EVAL_DIR


def metrics_file(run: str | Path) -> Path:
    return Path(run) / METRICS_PATH


def eval_images_dir(run: str | Path) -> Path:
    return eval_dir(run) / IMAGES_DIR


def image_folder_name(step: int | None, protocol: str) -> str:
    """eval/images/<this>: stepNNNNNN (full protocol), stepNNNNNN-light; baseline, baseline-light."""
    base = "baseline" if step is None else f"step{step:06d}"
    return base if protocol == FULL else f"{base}-{protocol}"


def image_folder(run: str | Path, step: int | None, protocol: str) -> Path:
    return eval_images_dir(run) / image_folder_name(step, protocol)


def parse_image_folder_name(name: str, protocol: str) -> int | None:
    """The training step of an image folder of `protocol` (stepNNNNNN[-light]); None for anything else."""
    suffix = "" if protocol == FULL else f"-{protocol}"
    digits = name[4:len(name) - len(suffix)] if name.startswith("step") and name.endswith(suffix) else ""
    return int(digits) if digits.isdigit() and name == f"step{digits}{suffix}" else None


def image_name(p: int | None, k: int, digits: int = EVAL_IMAGE_DIGITS) -> str:
    """Image k (seed + k) of prompt p: pNN-KKK.png; p=None (generate.py, one prompt): KKKK.png."""
    return f"{k:0{digits}d}.png" if p is None else f"p{p:02d}-{k:0{digits}d}.png"


def parse_image_name(name: str) -> tuple[int | None, int] | None:
    """(p, k) of an image name written by `image_name` (any digit count); None for other files."""
    m = IMAGE_NAME.match(name)
    return None if m is None else (None if m["p"] is None else int(m["p"]), int(m["k"]))


def prompt_images(folder: str | Path, p: int) -> list[Path]:
    """Images of prompt p in a folder, in seed order (image k from seed eval.seed + k)."""
    found = [(parse_image_name(f.name), f) for f in Path(folder).glob(f"p{p:02d}-*.png")]
    return [f for parsed, f in sorted((x for x in found if x[0] is not None and x[0][0] == p),
                                      key=lambda x: x[0][1])]


def run_root_file(path: str | Path, key: str = "embeddings") -> Path:
    """A file argument that may name a run folder (generate.py `embeddings=[<run>]`, `hypernetworks=[<run>]`): the
    run's one root file (<name>.pt, or an SDXL run's <name>.safetensors), else one line saying what the folder is."""
    from textinv.errors import UserError

    path = Path(path)
    if not path.is_dir():
        return path
    if not config_file(path).is_file() and not finished_marker(path).is_file():
        return path  # not a run folder: the reader decides (e.g. diffusers' SDXL pair folder)
    roots = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".pt", ".safetensors")
                   and "-last-good" not in p.stem)
    if len(roots) == 1:
        return roots[0]
    state = "finished" if finished_marker(path).is_file() else "unfinished (no run.json)"
    if not roots:
        snaps = sorted(p.name for p in snapshots_dir(path).glob("*.pt")) if snapshots_dir(path).is_dir() else []
        hint = (f"; use a snapshot, e.g. {key}=[{snapshots_dir(path) / snaps[-1]}]" if snaps
                else "; let it finish, or give a file")
        raise UserError(f"{key}: {path} is a run folder ({state}) without its final file yet{hint}")
    raise UserError(f"{key}: {path} is a run folder with several root files ({', '.join(p.name for p in roots)}); "
                    f"name the file, e.g. {key}=[{roots[0]}]")
