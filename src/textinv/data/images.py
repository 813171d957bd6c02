"""Read concept photos robustly: EXIF orientation, RGBA/grayscale/CMYK/16-bit, huge files, bad files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from textinv.errors import UserError

log = logging.getLogger(__name__)

# Marks a folder as drawn by a concept's `drawer` (hidden: not a concept image). Such a folder is redrawn on
# every use, so a changed `draw:` spec or renderer never trains on stale pictures; a folder without it is
# never touched.
DRAWN_RECORD = ".drawn.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".mpo", ".bmp", ".gif", ".tif", ".tiff"}
SIDE_FILES = {".txt", ".json", ".md", ".yaml", ".yml", ".csv"}  # captions and notes beside images: not images
# A mask beside its image (OneTrainer's convention): `00-masklabel.png` for `00.jpg`; white = the subject.
MASK_SUFFIX = "-masklabel"


def mask_file(image_path: Path) -> Path:
    """Where an image's sidecar mask would be: `<stem>-masklabel.png` beside it."""
    return image_path.with_name(f"{image_path.stem}{MASK_SUFFIX}.png")


def is_mask_file(name: str) -> bool:
    return Path(name).stem.endswith(MASK_SUFFIX)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder` (sorted; hidden files and sub-folders ignored)."""
    if not folder.exists():
        raise UserError(f"concept data folder {folder} does not exist; put 3-8 images there or set concept.data_dir=<folder>")
    if not folder.is_dir():
        raise UserError(f"concept.data_dir={folder} is not a folder; point it at a folder of images")
    files, unsupported, hidden = [], [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        # is_file() follows links; a dangling or looping link is simply not a file.
        if entry.name.startswith(".") or is_mask_file(entry.name):  # hidden files and masks are not concept images
            if entry.name.startswith(".") and entry.name != DRAWN_RECORD and _is_file(entry):
                hidden.append(entry.name)
            continue
        if Path(entry.name).suffix.lower() not in IMAGE_SUFFIXES:
            if Path(entry.name).suffix.lower() not in SIDE_FILES and _is_file(entry):
                unsupported.append(entry.name)
            continue
        try:
            if entry.is_file():
                files.append(Path(entry.path))
        except OSError:
            log.warning("skipping %s: cannot stat it", entry.path)
    if unsupported and files:  # never a silent drop: say which files are not used
        log.warning("skipping %d file(s) of unsupported formats in %s (%s); use %s", len(unsupported), folder,
                    ", ".join(unsupported[:5]) + (", ..." if len(unsupported) > 5 else ""),
                    ", ".join(sorted(IMAGE_SUFFIXES)))
    if not files and hidden:  # "no images" would be wrong: they are there, under names starting with a dot
        raise UserError(f"concept data folder {folder} holds only hidden files ({', '.join(hidden[:5])}"
                        f"{', ...' if len(hidden) > 5 else ''}), which are never read as images (macOS writes ._ "
                        "copies); rename the images without the leading dot or add visible ones")
    if not files:
        raise UserError(f"concept data folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add 3-8 images of the concept")
    return files


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "P") and (img.mode != "P" or "transparency" in img.info) or (
        img.mode in ("RGB", "L") and "transparency" in img.info)


def alpha_of(img: Image.Image) -> Image.Image | None:
    """The alpha channel ("L") of an image with transparency that is not fully opaque, else None."""
    if not _has_alpha(img):
        return None
    alpha = img.convert("RGBA").getchannel("A")
    return alpha if alpha.getextrema()[0] < 255 else None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGB" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _shrink(img: Image.Image, min_side: int) -> Image.Image:
    w, h = img.size
    scale = min_side / min(w, h)
    if scale < 1:
        img = img.resize((max(min_side, round(w * scale)), max(min_side, round(h * scale))), Image.Resampling.LANCZOS)
    return img


def read_image(path: Path, min_side: int) -> tuple[Image.Image, Image.Image | None]:
    """The one image reader: (RGB at roughly `min_side` on its short side, its alpha channel as "L" or None
    when the image is opaque). Large JPEGs decode at reduced size; transparency is composited onto white."""
    with Image.open(path) as img:
        img.draft("RGB", (min_side, min_side))  # JPEG: decode at 1/2, 1/4, 1/8 scale when big
        img.seek(0)  # animated GIF / multi-picture MPO: the first frame
        img = ImageOps.exif_transpose(img)
        img.load()
        alpha = alpha_of(img)
        img = _to_rgb(img)
    img = _shrink(img, min_side)
    if alpha is not None:
        alpha = alpha.resize(img.size, Image.Resampling.BILINEAR)
    return img, alpha


def load_image(path: Path, min_side: int) -> Image.Image:
    """Decode one image at roughly `min_side` on its short side (large JPEGs decode at reduced size)."""
    return read_image(path, min_side)[0]


def read_mask(path: Path, size: tuple[int, int]) -> Image.Image:
    """A sidecar mask as "L" (white = subject; a colour mask reads as its luminance), resized to `size` (w, h)."""
    with Image.open(path) as m:
        m.seek(0)
        m = ImageOps.exif_transpose(m)
        m.load()
        if m.mode in ("RGBA", "LA"):  # a transparent mask: its opaque, bright part is the subject
            m = Image.composite(m.convert("L"), Image.new("L", m.size, 0), m.getchannel("A"))
        m = m.convert("L")
    return m if m.size == size else m.resize(size, Image.Resampling.BILINEAR)


def original_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file as shown (EXIF rotation applied), read from its header only."""
    with Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
            w, h = h, w
    return h, w


READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_concept_images(folder: Path, min_side: int) -> tuple[list[Image.Image], list[Path]]:
    """All readable images of a concept; unreadable or truncated ones are skipped with a warning."""
    images, files, _ = load_concept(folder, min_side)
    return images, files


def load_concept(folder: Path, min_side: int, masked: bool = False
                 ) -> tuple[list[Image.Image], list[Path], list[Image.Image | None]]:
    """All readable images of a concept, their files and masks; unreadable, truncated or oversized ones are skipped
    with a warning.

    masked=True: each image's mask ("L", the image's size; None: no mask, the whole image counts):
    its sidecar `<stem>-masklabel.png` if there is one, else its alpha channel. masked=False warns once per
    transparent image: its transparency is flattened onto white, and the word would learn "on white"."""
    from textinv.validation import check_file_size

    images, used, masks = [], [], []
    for path in list_image_files(folder):
        try:
            check_file_size(path, "image")
        except UserError as err:
            log.warning("skipping %s: %s", path, str(err).split(" is ", 1)[1] if " is " in str(err) else err)
            continue
        try:
            img, alpha = read_image(path, min_side)
        except READ_ERRORS as err:
            log.warning("skipping unreadable image %s (%s)", path, err)
            continue
        mask = None
        if masked:
            side = mask_file(path)
            if side.is_file():
                try:
                    mask = read_mask(side, img.size)
                except READ_ERRORS as err:
                    raise UserError(f"mask {side} of {path.name} is unreadable ({err}); fix or remove it") from None
            else:
                mask = alpha
        elif alpha is not None:
            log.warning("%s is transparent: training sees it on white (set data.masked=true to learn only its "
                        "opaque part)", path)
        images.append(img)
        used.append(path)
        masks.append(mask)
    if not images:
        raise UserError(f"no readable image in {folder}: every file failed to decode; add valid JPEG/PNG/WebP images")
    if masked:
        missing = [p.name for p, m in zip(used, masks) if m is None]
        if len(missing) == len(used):
            raise UserError(f"data.masked=true but no image in {folder} has a mask: give each image an alpha channel "
                            f"or a sidecar <name>{MASK_SUFFIX}.png (white = the subject), or set data.masked=false")
        if missing:
            log.warning("data.masked=true: %d image(s) without a mask train on the whole picture (%s)", len(missing),
                        ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))
    return images, used, masks


def read_caption(image_path: Path) -> str | None:
    caption = image_path.with_suffix(".txt")
    if caption.is_file():
        from textinv.validation import check_file_size

        check_file_size(caption, "caption", "a caption is one line of text: shorten it or remove the file")
        try:
            text = caption.read_bytes().decode("utf-8-sig").strip()
        except UnicodeDecodeError as err:  # garbled text would train on a wrong prompt: refuse
            raise UserError(f"caption {caption} is not UTF-8 text ({err.reason} at byte {err.start}); re-save it as "
                            "UTF-8 or remove it") from None
        return text or None
    return None
