"""Concept images -> (image index, flip, prompt[, pixels]) samples; the DataModule that serves them.

Every sample is a pure function of (seed, sample index): which image, flip, template, augmentation.
The sampler hands out global sample indices counted from the first optimizer step, so a resumed
run, or a DDP rank, sees exactly the samples an uninterrupted single-process run would have seen.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from textinv.data.demo_concept import synthesize_demo_concept
from textinv.errors import UserError
from textinv.data.images import DRAWN_RECORD, list_image_files, load_concept, original_size, read_caption
from textinv.data.templates import TEMPLATES

log = logging.getLogger(__name__)


@dataclass
class Concept:
    """One `concept=` config: the new word, what it is, where its images are."""

    name: str
    placeholder: str
    initializer: str | None = None
    kind: str = "object"  # object | style
    data_dir: str = ""
    prompts: list[str] = field(default_factory=list)  # evaluation prompts, `{}` = the placeholder
    synthesize: bool = False  # draw the images into the default folder on first use (the demo concept)
    draw: dict | None = None  # a drawn concept's spec: `drawer`'s arguments (implies synthesize)
    # draws `draw` into a folder, drawer(folder, **draw): a `_target_` with `_partial_: true` in the concept's
    # config (the miniature world's textinv.toyworld.draw.draw_concept), so the core never imports the world
    drawer: Callable | None = None

    def __post_init__(self):
        if self.kind not in TEMPLATES:
            raise UserError(f"concept.kind={self.kind!r} is unknown; use object or style")
        if not self.data_dir:
            self.data_dir = self.default_dir
        if self.draw is not None and not callable(self.drawer):
            raise UserError(f"concept {self.name} has a draw: spec but no drawer to draw it; add "
                            "drawer: {_target_: textinv.toyworld.draw.draw_concept, _partial_: true}")

    @property
    def default_dir(self) -> str:
        return f"data/concepts/{self.name}"

    @property
    def should_synthesize(self) -> bool:
        """Only into the default folder: a mistyped concept.data_dir must fail, not fill up with drawings.
        An empty folder is filled; one drawn from a `draw:` spec before is drawn again (cheap, and the spec
        or the world's renderer may have changed since)."""
        folder = self.folder
        return ((self.synthesize or self.draw is not None) and folder.resolve() == Path(self.default_dir).resolve()
                and (not folder.exists() or not any(folder.iterdir())
                     or (self.draw is not None and (folder / DRAWN_RECORD).is_file())))

    @property
    def folder(self) -> Path:
        return Path(self.data_dir).expanduser()


@dataclass
class Augment:
    """The study's proposed augmentations. Any of them changes pixels, which disables the latent cache."""

    crop_scale: float = 1.0  # random resized crop keeping this fraction of the area at least (1 = off)
    rotation: float = 0.0  # max degrees
    color_jitter: float = 0.0  # brightness/contrast/saturation strength

    @property
    def active(self) -> bool:
        return self.crop_scale < 1.0 or self.rotation > 0 or self.color_jitter > 0


@dataclass
class Masking:
    """How `data.masked=true` weights the loss (textinv.training.masked_loss): 1 inside an image's mask, `floor`
    outside it, at latent resolution; a share of samples trains unmasked; each image's loss is its weighted mean
    (`normalize`) or a plain mean, in which an image's loss shrinks with its mask's area."""

    floor: float = 0.25  # weight outside the mask (measured in the miniature world: README, Masks)
    unmasked_probability: float = 0.0  # share of samples trained on the whole image
    normalize: bool = True  # divide each image's weighted loss by its weight sum (mask area)

    def __post_init__(self):
        if not 0 <= self.floor <= 1 or not 0 <= self.unmasked_probability <= 1:
            raise UserError(f"data.mask.floor={self.floor} and data.mask.unmasked_probability="
                            f"{self.unmasked_probability} must lie in [0, 1]")


def mask_tensor(mask: Image.Image) -> tv_tensors.Mask:
    """A PIL "L" mask as a [1, H, W] uint8 Mask (geometric transforms move it with its image; colour ones skip it)."""
    return tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.uint8)).unsqueeze(0))


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([abs(int(k)) for k in key])


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor in [-1, 1], the VAE's input range."""
    return TF.to_dtype(TF.to_image(img), torch.float32, scale=True) * 2 - 1


class ConceptDataset(Dataset):
    def __init__(self, images: list[Image.Image], captions: list[str | None], placeholder: str, kind: str,
                 resolution: int, flip_p: float, augment: Augment, with_pixels: bool, seed: int, length: int,
                 masks: list[Image.Image] | None = None, unmasked_probability: float = 0.0):
        self.images, self.captions = images, captions
        self.masks, self.unmasked_probability = masks, unmasked_probability
        self.placeholder, self.templates = placeholder, TEMPLATES[kind]
        self.resolution, self.flip_p, self.augment = resolution, flip_p, augment
        self.with_pixels, self.seed, self.length = with_pixels, seed, length
        self.center = T.Compose([T.Resize(resolution, antialias=True), T.CenterCrop(resolution)])
        ops = []
        if augment.crop_scale < 1.0:
            ops.append(T.RandomResizedCrop(resolution, scale=(augment.crop_scale, 1.0), antialias=True))
        else:
            ops.append(self.center)
        if augment.rotation > 0:
            ops.append(T.RandomRotation(augment.rotation, interpolation=T.InterpolationMode.BILINEAR))
        if augment.color_jitter > 0:
            j = augment.color_jitter
            ops.append(T.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4)))
        self.random_view = T.Compose(ops)

    def __len__(self) -> int:
        return self.length

    def image_index(self, i: int) -> int:
        """Cycle through the images in a fresh order every len(images) samples (an 'epoch')."""
        n = len(self.images)
        epoch, pos = divmod(i, n)
        return int(_rng(self.seed, epoch, 17).permutation(n)[pos])

    def prompt(self, image: int, template: int) -> str:
        text = self.templates[template].format(self.placeholder)
        caption = self.captions[image]
        if caption is None:
            return text
        if "{}" in caption:
            return caption.replace("{}", self.placeholder)
        if self.placeholder in caption:
            return caption
        return f"{text}, {caption}"

    def all_prompts(self) -> list[str]:
        """Every prompt a sample can get: each template with each image's caption (run invariants)."""
        return list(dict.fromkeys(self.prompt(i, t) for i in range(len(self.images)) for t in range(len(self.templates))))

    def __getitem__(self, i: int) -> dict:
        image = self.image_index(i)
        rng = _rng(self.seed, i, 29)
        flip = bool(rng.random() < self.flip_p)
        item = {"index": i, "image": image, "flip": flip,
                "prompt": self.prompt(image, int(rng.integers(len(self.templates))))}
        if self.masks is not None:  # its own stream: masks leave the flip, prompt and view of a sample unchanged
            item["use_mask"] = bool(_rng(self.seed, i, 31).random() >= self.unmasked_probability)
        if self.with_pixels:
            transform = self.random_view if self.augment.active else self.center
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**62)))
                if self.masks is None:
                    view = transform(self.images[image])
                else:  # one call: the mask takes the same crop and rotation; colour jitter leaves it alone
                    view, mask = transform(self.images[image], mask_tensor(self.masks[image]))
                    mask = mask.as_subclass(torch.Tensor).float() / 255
                    item["mask"] = TF.horizontal_flip(mask) if flip else mask
            pixels = to_tensor(view)
            item["pixels"] = TF.horizontal_flip(pixels) if flip else pixels
        return item


class StepSampler(Sampler[int]):
    """Global sample indices: micro-batch k of rank r holds (k * world + r) * batch + b.

    Iteration starts at micro-batch `start` (the resume point) but the length always counts the whole
    run: Lightning restores how many batches of the epoch were done and fetches only the rest, so a
    resumed run continues with exactly the samples an uninterrupted one would have used.
    """

    def __init__(self, start: int, stop: int, batch_size: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch_size, rank, world

    def __len__(self) -> int:
        return self.stop * self.batch

    def __iter__(self):
        for k in range(self.start, self.stop):
            first = (k * self.world + self.rank) * self.batch
            yield from range(first, first + self.batch)


class ConceptDataModule(L.LightningDataModule):
    def __init__(self, concept: Concept, resolution: int = 512, batch_size: int = 1, flip_p: float = 0.5,
                 augment: Augment | dict | None = None, latent_cache: bool = True, num_workers: int = 0,
                 seed: int = 0, steps: int = 1, masked: bool = False, mask: Masking | dict | None = None):
        super().__init__()
        self.concept = concept
        self.masked = masked  # weight the loss by each image's mask (alpha channel or <stem>-masklabel.png)
        self.masking = mask if isinstance(mask, Masking) else Masking(**(mask or {}))
        self.resolution, self.batch_size, self.flip_p = resolution, batch_size, flip_p
        self.augment = augment if isinstance(augment, Augment) else Augment(**(augment or {}))
        self.latent_cache, self.num_workers, self.seed, self.steps = latent_cache, num_workers, seed, steps
        self.images: list[Image.Image] | None = None
        self.captions: list[str | None] = []
        self.files: list[Path] = []
        self.masks: list[Image.Image] | None = None  # data.masked: one "L" mask per image (255 = subject)

    @property
    def use_cache(self) -> bool:
        """Latents are cached when every view of an image is fixed: center crop, optionally flipped."""
        return self.latent_cache and not self.augment.active

    def load(self) -> None:
        """Read the concept's images (cheap; done before the big model loads to fail fast)."""
        if self.images is not None:
            return
        folder = self.concept.folder
        with self._drawing_lock(folder):
            if self.concept.should_synthesize:
                log.info("drawing the %s concept's images into %s", self.concept.name, folder)
                if self.concept.draw is not None:
                    self.concept.drawer(folder, **self.concept.draw)
                else:
                    synthesize_demo_concept(folder)
            list_image_files(folder)  # clear error for a missing/empty folder
            images, files, masks = load_concept(folder, self.resolution, self.masked)
        if self.masked:  # an image without a mask counts whole
            self.masks = [m if m is not None else Image.new("L", img.size, 255) for img, m in zip(images, masks)]
        self.images, self.files = images, files
        self.captions = [read_caption(p) for p in self.files]
        log.info("concept %s: %d images from %s", self.concept.name, len(self.images), folder)

    def _drawing_lock(self, folder: Path):
        """Runs that draw their concept (sweep points, DDP ranks, parallel tests) share its folder: one draws and
        reads at a time, so none reads a half-written picture. A user's own folder needs no lock."""
        if not self.concept.should_synthesize:
            return contextlib.nullcontext()
        folder.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder.parent / f".{folder.name}.draw.lock"), timeout=600)

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def pixel_tensor(self) -> torch.Tensor:
        """All images, center-cropped to the resolution, in [-1, 1]: what the latent cache encodes."""
        self.load()
        center = T.Compose([T.Resize(self.resolution, antialias=True), T.CenterCrop(self.resolution)])
        return torch.stack([to_tensor(center(img)) for img in self.images])

    def mask_tensor(self) -> torch.Tensor | None:
        """data.masked: every image's mask, cropped as `pixel_tensor` crops its image, [N, 1, H, W] in [0, 1]."""
        self.load()
        if self.masks is None:
            return None
        center = T.Compose([T.Resize(self.resolution, antialias=True), T.CenterCrop(self.resolution)])
        return torch.stack([center(mask_tensor(m)).as_subclass(torch.Tensor).float() / 255 for m in self.masks])

    def size_conditioning(self) -> torch.Tensor:
        """[N, 6] per image: original (h, w), crop top-left (y, x) of the centre crop, target (h, w).

        SDXL's `time_ids` (the paper's size and crop conditioning, as diffusers' SDXL scripts compute them):
        the image is resized so its short side is the resolution, then centre-cropped. A mirrored centre
        crop has the same offsets; augmented views use the centre view's numbers.
        """
        self.load()
        rows = []
        for path in self.files:
            h, w = original_size(path)
            scale = self.resolution / min(h, w)
            new_h, new_w = max(self.resolution, int(h * scale)), max(self.resolution, int(w * scale))
            top, left = int(round((new_h - self.resolution) / 2)), int(round((new_w - self.resolution) / 2))
            rows.append([h, w, top, left, self.resolution, self.resolution])
        return torch.tensor(rows, dtype=torch.float32)

    def dataset(self, length: int) -> ConceptDataset:
        self.load()
        return ConceptDataset(self.images, self.captions, self.concept.placeholder, self.concept.kind,
                              self.resolution, self.flip_p, self.augment, not self.use_cache, self.seed, length,
                              self.masks, self.masking.unmasked_probability)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        accum = trainer.accumulate_grad_batches if trainer else 1
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        done = trainer.global_step if trainer else 0  # restored before this is called on resume
        total = self.steps * accum
        sampler = StepSampler(done * accum, total, self.batch_size, rank, world)
        return DataLoader(self.dataset(total * self.batch_size * world), batch_size=self.batch_size,
                          sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)
