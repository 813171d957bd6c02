"""Evaluation metrics: CLIP-I / CLIP-T (open_clip), optional DINO (timm), FID / KID / IS (torchmetrics).

Definitions (CONTEXT.md section 3, as the Textual Inversion and DreamBooth papers compute them):
- CLIP-I (reconstruction): mean cosine similarity over ALL (training image, generated image) pairs of
  L2-normalised CLIP image embeddings. DINO is the same all-pairs mean on DINO ViT-S/16 features.
- CLIP-T (editability): mean cosine between the CLIP text embedding of the prompt with the placeholder
  removed and each generated image. torchmetrics' `CLIPScore` is a different metric (1:1 pairs, x100).
- FID / KID / IS: torchmetrics' metric classes on torch-fidelity's Inception v3 features. The images go
  through Inception ONCE; the three metrics then receive the extracted features (float64).

Every model weight comes from a local file or a cache; a missing one is a `UserError` naming the file
and the config key that provides it. Heavy libraries are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from textinv.errors import UserError
from textinv.utils.offline import hub_offline

log = logging.getLogger(__name__)

Images = Union[Sequence[Image.Image], torch.Tensor]  # PIL images, or uint8 [N, 3, H, W]


# --------------------------------------------------------------------------------------------------
# Similarity definitions (pure tensor math; the tests check these against hand-computed values)
# --------------------------------------------------------------------------------------------------

def _unit_rows(emb: torch.Tensor, name: str) -> torch.Tensor:
    """[N, D] -> L2-normalised float64 rows (re-normalising is harmless and guards against raw inputs)."""
    if emb.dim() != 2 or emb.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, D] tensor, got shape {tuple(emb.shape)}")
    return F.normalize(emb.detach().to("cpu", torch.float64), dim=-1)


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all (row of `a`, row of `b`) pairs."""
    a, b = _unit_rows(a, "a"), _unit_rows(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: {a.shape[1]} vs {b.shape[1]}")
    return float((a @ b.T).mean())


def clip_i(train_emb: torch.Tensor, gen_emb: torch.Tensor) -> float:
    """Reconstruction: mean cosine over all (training image, generated image) pairs."""
    return mean_pairwise_cosine(train_emb, gen_emb)


def dino_similarity(train_emb: torch.Tensor, gen_emb: torch.Tensor) -> float:
    """DreamBooth's DINO score: the same all-pairs mean, on DINO features."""
    return mean_pairwise_cosine(train_emb, gen_emb)


def clip_t(text_emb: torch.Tensor, gen_emb: torch.Tensor) -> float:
    """Editability: mean cosine between the (placeholder-free) prompt embedding and each generated image.

    `text_emb` is [D] or [1, D] (one prompt for all images) or [N, D] (row i is the prompt of image i,
    for a batch that mixes prompts).
    """
    text = _unit_rows(text_emb.reshape(1, -1) if text_emb.dim() == 1 else text_emb, "text_emb")
    gen = _unit_rows(gen_emb, "gen_emb")
    if text.shape[1] != gen.shape[1]:
        raise ValueError(f"embedding sizes differ: {text.shape[1]} vs {gen.shape[1]}")
    if text.shape[0] == 1:
        return float((gen @ text[0]).mean())
    if text.shape[0] == gen.shape[0]:
        return float((gen * text).sum(dim=-1).mean())
    raise ValueError(f"clip_t: {text.shape[0]} prompts for {gen.shape[0]} images; give 1 or one per image")


_ARTICLE = r"(?i:a|an|the)"


def strip_placeholder(prompt: str, placeholder: str) -> str:
    """The prompt without the placeholder, for CLIP-T ("a photo of <tok> on the moon" -> "a photo of on the moon").

    What is removed: the placeholder and its multi-vector spellings (`<tok>_1`, `<tok>_2`, ...), then
    spaces are collapsed and no space is left before punctuation. Like the original protocol, nothing
    is rephrased; the one exception is an article that would dangle at the end of a phrase, which is
    dropped: "a photo of a <tok>" -> "a photo of", "an oil painting of the <tok>, 4k" -> "an oil
    painting of, 4k". An article followed by another word stays ("A <deku-tree> tree" -> "A tree").
    Works on templates too: `strip_placeholder("a photo of a {}", "{}")`.
    """
    if not placeholder:
        raise ValueError("strip_placeholder: empty placeholder")
    # Word boundaries only where the placeholder itself starts/ends with a word character ("sks" must not
    # match inside "asks"; "<tok>" may touch anything).
    token = (r"(?<!\w)" if re.match(r"\w", placeholder) else "") + re.escape(placeholder) + r"(?:_\d+)*"
    token += r"(?!\w)" if re.search(r"\w$", placeholder) else ""
    # One or more consecutive placeholder tokens ("<tok> <tok>_1 <tok>_2") count as one slot.
    slot = token + r"(?:\s+" + token + r")*"
    # Dangling article: "... a <tok>" at the end of the prompt or before punctuation.
    text = re.sub(r"(?<!\w)" + _ARTICLE + r"\s+" + slot + r"(?=\s*(?:[,.;:!?)]|$))", "", prompt)
    text = re.sub(slot, "", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    return text.strip()


# --------------------------------------------------------------------------------------------------
# CLIP (open_clip)
# --------------------------------------------------------------------------------------------------

def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."



def normalised_features(images: Sequence[Image.Image], preprocess, encode, batch_size: int, device) -> torch.Tensor:
    """[N, D] L2-normalised features of `encode` over preprocessed RGB images, in batches (float32, CPU)."""
    if len(images) == 0:
        raise ValueError("image_embeddings: no images")
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([preprocess(img.convert("RGB")) for img in images[start:start + batch_size]])
        out.append(encode(batch.to(device)).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)

class ClipScorer:
    """CLIP image/text embeddings with open_clip's own preprocessing for `arch`.

    weights: an open_clip pretrained tag ("openai", fetched into the HF cache on first use), a local
    weights file (.bin/.pt/.safetensors), or None for random init (tests, offline).

    quick_gelu: OpenAI's CLIP models use QuickGELU, but open_clip's plain "ViT-B-32" config uses GELU
    and only *warns* on the mismatch, even for the "openai" tag. None picks the activation the weights
    were trained with: the tag's, or for a file (and for None) the one of this arch's "openai" tag,
    since the reference metric uses OpenAI's weights. Set it explicitly for other checkpoints.
    """

    def __init__(self, arch: str = "ViT-B-32", weights: str | None = "openai", device: str | torch.device = "cpu",
                 batch_size: int = 32, quick_gelu: bool | None = None):
        import open_clip

        weights = None if weights is None else str(weights)
        if arch.startswith("local-dir:"):  # a whole open_clip model folder: config + weights, nothing to pick
            folder = Path(arch[len("local-dir:"):]).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise UserError(f"eval.clip.arch={arch}: no open_clip_config.json in {folder}; point it at an "
                                "open_clip model folder (open_clip_config.json + open_clip_model.safetensors)")
            arch, weights, quick_gelu = f"local-dir:{folder}", None, False  # the folder's config decides
        tag_cfg = open_clip.get_pretrained_cfg(arch, weights) if weights else {}
        if weights and not tag_cfg:
            weights = os.path.expanduser(str(weights))
            if not os.path.isfile(weights):
                tags = open_clip.list_pretrained_tags_by_model(arch)
                tags = ", ".join(tags[:5]) + (", ..." if len(tags) > 5 else "") if tags else "none"
                raise UserError(f"CLIP weights {weights!r} for {arch} are neither an open_clip tag (known: {tags}) nor "
                                f"an existing file; set eval.clip.weights=<local .bin/.safetensors file>, or eval=off to train without "
                                f"evaluation")
        if quick_gelu is None:
            reference = tag_cfg or open_clip.get_pretrained_cfg(arch, "openai")
            quick_gelu = bool(reference.get("quick_gelu", False))
        if tag_cfg:  # fetched from the hub on first use: a short bound when it does not answer
            from textinv.utils.offline import offline_if_unreachable

            offline_if_unreachable(f"CLIP {arch} weights {weights!r}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=weights, device=device, force_quick_gelu=quick_gelu)
        except RuntimeError as err:
            if tag_cfg:  # a known tag that could not be fetched (offline, no cache)
                raise UserError(f"cannot load CLIP {arch} weights {weights!r} (offline and not in the HF cache?); "
                                f"set eval.clip.weights=<local .bin/.safetensors file>, fill the cache once online "
                                f"with open_clip.create_model({arch!r}, pretrained={weights!r}), or train without "
                                f"evaluation with eval=off ({_one_line(err, 120)})") from err
            raise UserError(f"cannot build CLIP {arch} from weights={weights!r}: {_one_line(err)}; "
                            f"check eval.clip.arch / eval.clip.weights") from err
        self.arch, self.weights, self.device, self.batch_size = arch, weights, torch.device(device), batch_size
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}  # every evaluation of a run scores the same prompts

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D] L2-normalised image embeddings (float32, CPU)."""
        return normalised_features(images, self.preprocess, self.model.encode_image, self.batch_size, self.device)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] L2-normalised text embeddings (float32, CPU)."""
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("text_embeddings: expected a non-empty list of strings")
        key = tuple(texts)
        if key not in self._text_cache:
            self._text_cache[key] = self._text_embeddings(key)
        return self._text_cache[key].clone()

    def _text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]))
            out.append(self.model.encode_text(tokens.to(self.device)).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)


CLIP_T_TEXTS = ("original", "drop_article")


def placeholder_free_text(prompt: str, placeholder: str, mode: str = "original") -> str:
    """The text CLIP-T compares images with: the prompt without its placeholder.

    original (default): the original evaluation's literal removal (`prompt.replace("*", "")`), nothing
    rephrased: "a photo of a <tok>" -> "a photo of a " (CLIP's tokenizer collapses the spaces);
    drop_article: `strip_placeholder`, which also drops an article left dangling ("a photo of").
    """
    if mode == "original":
        return prompt.replace(placeholder, "")
    if mode == "drop_article":
        return strip_placeholder(prompt, placeholder)
    raise UserError(f"eval.clip_t_text={mode!r} is unknown; use one of {', '.join(CLIP_T_TEXTS)}")


def clip_metrics(scorer: ClipScorer, train_images: Sequence[Image.Image], gen_images: Sequence[Image.Image],
                 prompt: str, placeholder: str, mode: str = "original") -> dict:
    """CLIP-I and CLIP-T of the images generated from one prompt, plus the text CLIP-T used."""
    gen = scorer.image_embeddings(gen_images)
    text = placeholder_free_text(prompt, placeholder, mode)
    return {"clip_i": clip_i(scorer.image_embeddings(train_images), gen),
            "clip_t": clip_t(scorer.text_embeddings([text]), gen), "clip_t_text": text}


# --------------------------------------------------------------------------------------------------
# DINO ViT-S/16 (timm, local weights file)
# --------------------------------------------------------------------------------------------------

class DinoScorer:
    """DINO ViT-S/16 CLS features, as DreamBooth's DINO metric uses.

    weights: "hub" (timm's `vit_small_patch16_224.dino`, fetched into the HF cache on first use), a local
    file (timm's converted weights or Facebook's `dino_deitsmall16_pretrain.pth`), or None for random init.
    Preprocessing is DINO's evaluation transform: bicubic resize to 256, centre crop 224, ImageNet mean/std.
    """

    MODEL = "vit_small_patch16_224.dino"

    def __init__(self, weights: str | None = "hub", device: str | torch.device = "cpu", batch_size: int = 32):
        import timm
        from timm.data import create_transform, resolve_data_config

        overlay = None
        if weights not in (None, "hub"):
            weights = os.path.expanduser(str(weights))
            if not os.path.isfile(weights):
                raise UserError(f"DINO weights file {weights} does not exist; set eval.dino.weights=<local "
                                f"dino_deitsmall16_pretrain.pth or .safetensors file> or eval.dino.weights=null to skip")
            overlay = {"file": weights}
        try:
            model = timm.create_model(self.MODEL, pretrained=weights is not None, num_classes=0,
                                      pretrained_cfg_overlay=overlay)
        except Exception as err:  # noqa: BLE001 - hub/offline/state-dict errors all mean "these weights don't load"
            raise UserError(f"cannot load DINO {self.MODEL} weights {weights!r}: {_one_line(err, 120)}; set "
                            f"eval.dino.weights=<local dino_deitsmall16_pretrain.pth file>") from err
        self.model = model.to(device).eval().requires_grad_(False)
        self.device, self.batch_size = torch.device(device), batch_size
        cfg = resolve_data_config({"crop_pct": 0.875, "interpolation": "bicubic"}, model=model)
        self.preprocess = create_transform(**cfg)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, 384] L2-normalised CLS features (float32, CPU)."""
        return normalised_features(images, self.preprocess, self.model, self.batch_size, self.device)


# --------------------------------------------------------------------------------------------------
# Inception: FID, KID, IS
# --------------------------------------------------------------------------------------------------

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
FEATURE_DIMS = (64, 192, 768, 2048)
_ALL_FEATURES = [str(d) for d in FEATURE_DIMS] + ["logits_unbiased"]  # IS uses the unbiased logits


def resolve_inception_weights(weights: str | os.PathLike | None = None, allow_download: bool | None = None) -> str:
    """Path of the Inception weights: the given file, else torch hub's cache (downloading it when allowed).

    allow_download=None downloads unless HF_HUB_OFFLINE=1 (the project's "offline" switch).
    """
    how = (f"set eval.fid.weights=<path to {INCEPTION_WEIGHTS_FILE}> (from {INCEPTION_URL}) "
           f"or put it in {Path(torch.hub.get_dir()) / 'checkpoints'}")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"Inception weights file {path} does not exist; {how}")
        return str(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if cached.is_file():
        return str(cached)
    if allow_download is None:
        allow_download = not hub_offline()
    if not allow_download:
        raise UserError(f"Inception weights {INCEPTION_WEIGHTS_FILE} are not cached and downloads are off; {how}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=False)
    except Exception as err:  # noqa: BLE001 - any network/disk failure has the same remedy
        raise UserError(f"cannot download Inception weights {INCEPTION_WEIGHTS_FILE} ({_one_line(err, 80)}); {how}") from err
    return str(cached)


def load_inception(weights: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                   antialias: bool = True, allow_download: bool | None = None) -> nn.Module:
    """torchmetrics' Inception v3 wrapper (torch-fidelity's network), returning every feature layer at once.

    antialias=True is torchmetrics' default resize; False is torch-fidelity's / the original TF resize.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = resolve_inception_weights(weights, allow_download)
    # torch-fidelity unpickles the file with weights_only=False; a safe load first refuses anything
    # that is not plain tensors before that happens.
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        extractor = NoTrainInceptionV3("inception-v3-compat", list(_ALL_FEATURES), path, antialias=antialias)
    except Exception as err:  # noqa: BLE001 - unreadable, unsafe or wrong-architecture file
        raise UserError(f"Inception weights file {path} does not load ({_one_line(err, 120)}); "
                        f"set eval.fid.weights=<path to {INCEPTION_WEIGHTS_FILE}>") from err
    return extractor.to(device)


def _uint8_batches(images: Images, batch_size: int):
    """Yield uint8 [B, 3, H, W] batches; PIL images of different sizes go in separate batches."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 [N, 3, H, W] images, got {images.dtype} {tuple(images.shape)}")
        yield from images.split(batch_size)
        return
    batch: list[torch.Tensor] = []
    for img in images:
        arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        if batch and (len(batch) == batch_size or arr.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(arr)
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def inception_features(extractor: nn.Module, images: Images, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """{"64": [N, 64], ..., "2048": [N, 2048], "logits_unbiased": [N, 1008]}, float64 on CPU.

    `extractor` comes from `load_inception` (all layers requested). Cache the result for the training
    images: it does not change during a run.
    """
    device = next(extractor.parameters()).device
    chunks: list[tuple[torch.Tensor, ...]] = []
    for batch in _uint8_batches(images, batch_size):
        # The multi-output forward of torchmetrics' wrapper (its public forward returns only the first layer).
        chunks.append(extractor._torch_fidelity_forward(batch.to(device)))
    if not chunks:
        raise ValueError("inception_features: no images")
    names = extractor.features_list
    return {name: torch.cat([c[i] for c in chunks]).reshape(-1, chunks[0][i].shape[-1]).double().cpu()
            for i, name in enumerate(names)}


class _Precomputed(nn.Module):
    """Identity 'feature extractor': lets torchmetrics' metric classes take features we already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _seeded_compute(metric, seed: int):
    """KID and IS draw subsets/shuffles with torch.randperm on the global CPU generator: fix it, then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return metric.compute()


def inception_metrics(real_images: Images, fake_images: Images, *, feature: int = 2048,
                      weights: str | os.PathLike | None = None, optional: bool = False, seed: int = 0,
                      kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10,
                      antialias: bool = True, batch_size: int = 16, device: str | torch.device = "cpu",
                      extractor: nn.Module | None = None) -> dict | None:
    """FID, KID (real vs fake) and Inception Score (fake): load Inception, one pass per image, then score.

    optional=True: missing Inception weights log a warning and return None instead of raising.
    extractor: a `load_inception()` result to reuse across calls (then `weights` is not read).
    To score many generated sets against the same training images, call `inception_features` once for
    the training images and `inception_scores` per set.
    """
    _check_feature(feature)
    if extractor is None:
        try:
            extractor = load_inception(weights, device=device, antialias=antialias)
        except UserError as err:
            if not optional:
                raise
            log.warning("skipping FID/KID/IS: %s", err)
            return None
    return inception_scores(inception_features(extractor, real_images, batch_size),
                            inception_features(extractor, fake_images, batch_size), feature=feature, seed=seed,
                            kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, is_splits=is_splits)


def _check_feature(feature: int) -> None:
    if feature not in FEATURE_DIMS:
        raise UserError(f"eval.fid.feature={feature} is not an Inception layer; use one of {FEATURE_DIMS}")


def inception_scores(real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor], *, feature: int = 2048,
                     seed: int = 0, kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10) -> dict:
    """FID, KID and IS from `inception_features` outputs, with torchmetrics' metric classes (float64).

    feature: Inception layer for FID/KID (64, 192, 768, 2048). With fewer samples than `feature`, the
    FID covariances are rank-deficient and the value is biased (it can come out negative): `biased` is
    set and a warning logged; prefer feature=64 or KID for few-shot sets. KID's subset size is clamped
    to the smaller set, IS's splits to at most half the generated images; `seed` fixes their shuffles.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_feature(feature)
    real_f, fake_f = real[str(feature)], fake[str(feature)]
    n_real, n_fake = real_f.shape[0], fake_f.shape[0]
    if min(n_real, n_fake) < 2:
        raise UserError(f"FID/KID need at least 2 real and 2 generated images, got {n_real} and {n_fake}")

    biased = min(n_real, n_fake) < feature
    if biased:
        # recommend a smaller layer only where there is one (feature=64 is already the smallest)
        fix = "KID (kid_mean)" if feature == min(FEATURE_DIMS) else f"eval.fid.feature={min(FEATURE_DIMS)} or KID"
        log.warning("FID on %d real / %d generated images with %d-d features: fewer samples than dimensions, "
                    "so FID is biased (may be negative); compare runs only at equal counts, or use %s",
                    n_real, n_fake, feature, fix)

    fid = FrechetInceptionDistance(feature=_Precomputed(feature))
    fid.update(real_f, real=True)
    fid.update(fake_f, real=False)
    fid_value = float(fid.compute())
    if not math.isfinite(fid_value) or fid_value < -1e-3:  # identical sets give ~ -1e-5 from float noise
        log.warning("FID came out %s (too few samples for %d-d features); it is not meaningful here", fid_value, feature)

    subset_size = min(kid_subset_size, n_real, n_fake)
    whole_sets = n_real == n_fake == subset_size  # every subset would be both whole sets: one is enough
    if subset_size < kid_subset_size:
        log.warning("KID subset size %d clamped to %d (the smaller image set)%s", kid_subset_size, subset_size,
                    "; every subset is then the whole set, so kid_std is 0" if whole_sets else "")
    # Each IS split needs >= 2 images, else its KL term is 0 by construction.
    splits = max(1, min(is_splits, n_fake // 2))
    if splits < is_splits:
        log.warning("Inception Score splits %d reduced to %d for %d generated images%s", is_splits, splits, n_fake,
                    "; is_std is undefined (nan) with one split" if splits == 1 else "")
    with warnings.catch_warnings():  # torchmetrics warns that KID/IS keep all features in memory: known, small here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(feature), subsets=1 if whole_sets else kid_subsets,
                                      subset_size=subset_size)
        inception_score = InceptionScore(feature=_Precomputed(1008), splits=splits)
    kid.update(real_f, real=True)
    kid.update(fake_f, real=False)
    kid_mean, kid_std = _seeded_compute(kid, seed)
    inception_score.update(fake["logits_unbiased"])
    with warnings.catch_warnings():  # std of a single split: torch warns, the nan is reported above
        warnings.simplefilter("ignore", UserWarning)
        is_mean, is_std = _seeded_compute(inception_score, seed)

    return {"fid": fid_value, "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "is_mean": float(is_mean), "is_std": float(is_std), "num_real": n_real, "num_fake": n_fake,
            "feature": feature, "biased": biased, "kid_subset_size": subset_size, "is_splits": splits}
