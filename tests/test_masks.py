"""Masked training (data.masked) and the word's strength (method.norm_rescale, method.init_pull): in-process, cheap."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.data.datamodule import Augment, Concept, ConceptDataModule
from textinv.data.images import list_image_files, load_concept
from textinv.errors import UserError
from textinv.training.masked_loss import latent_mask, loss_weights, weighted_mse

RED, WHITE = (220, 30, 30), (255, 255, 255)


def _subject_left(size: int = 64) -> tuple[Image.Image, Image.Image]:
    """A red block in the left half on white, and its mask."""
    arr = np.full((size, size, 3), WHITE, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    arr[16:48, 4:28] = RED
    mask[16:48, 4:28] = 255
    return Image.fromarray(arr), Image.fromarray(mask, "L")


def _concept(folder, **data) -> ConceptDataModule:
    dm = ConceptDataModule(Concept("m", "<m>", "shape", data_dir=str(folder)), resolution=64, **data)
    dm.load()
    return dm


@pytest.fixture
def rgba_folder(tmp_path):
    img, mask = _subject_left()
    rgba = img.convert("RGBA")
    rgba.putalpha(mask)
    rgba.save(tmp_path / "00.png")
    img.save(tmp_path / "01.png")  # opaque, with a sidecar mask (OneTrainer's convention)
    mask.save(tmp_path / "01-masklabel.png")
    return tmp_path


def test_alpha_and_sidecar_masks_and_the_transparency_warning(rgba_folder, caplog):
    assert [p.name for p in list_image_files(rgba_folder)] == ["00.png", "01.png"]  # a mask is not an image
    images, files, masks = load_concept(rgba_folder, 64, masked=True)
    _, expected = _subject_left()
    for m in masks:
        assert np.array_equal(np.asarray(m), np.asarray(expected))
    assert np.asarray(images[0])[0, 0].tolist() == list(WHITE)  # transparent part composited on white
    with caplog.at_level(logging.WARNING):
        load_concept(rgba_folder, 64, masked=False)
    lines = [r.getMessage() for r in caplog.records if "transparent" in r.getMessage()]
    assert len(lines) == 1 and "00.png" in lines[0] and "data.masked=true" in lines[0] and "\n" not in lines[0]


def test_masked_without_any_mask_is_one_line(tmp_path):
    _subject_left()[0].save(tmp_path / "00.png")
    with pytest.raises(UserError, match="data.masked=true but no image"):
        load_concept(tmp_path, 64, masked=True)


def test_weights_at_latent_resolution_are_area_averages():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :8, :8] = 1  # one whole latent pixel
    mask[..., 8:16, 8:12] = 1  # half of another
    small = latent_mask(mask, (8, 8))
    assert small.shape == (1, 1, 8, 8)
    assert small[0, 0, 0, 0] == 1 and small[0, 0, 1, 1] == 0.5 and small.sum() == 1.5
    w = loss_weights(small, floor=0.1)
    assert w[0, 0, 0, 0] == 1 and torch.isclose(w[0, 0, 1, 1], torch.tensor(0.55)) and w[0, 0, 7, 7] == pytest.approx(0.1)
    unmasked = loss_weights(torch.cat([small, small]), 0.1, torch.tensor([True, False]))
    assert torch.equal(unmasked[1], torch.ones_like(unmasked[1]))


def test_weighted_mse_ignores_the_background_and_normalises_by_area():
    target = torch.zeros(2, 4, 8, 8)
    pred = torch.ones(2, 4, 8, 8)
    small = torch.zeros(2, 1, 8, 8)
    small[0, ..., :2, :2] = 1  # a small subject
    small[1, ..., :6, :6] = 1  # a large one
    w = loss_weights(small, floor=0.0)
    assert weighted_mse(pred, target, w, normalize=True) == pytest.approx(1.0)  # each image its weighted mean
    plain = weighted_mse(pred, target, w, normalize=False)
    assert plain == pytest.approx((4 + 36) / 128)  # the plain mean shrinks with the area
    pred_bg_only = pred * (1 - small)  # errors only outside the masks
    assert weighted_mse(pred_bg_only, target, w) == 0
    full = loss_weights(torch.ones(2, 1, 8, 8), floor=0.1)
    assert weighted_mse(pred * 0.5, target, full) == pytest.approx(torch.nn.functional.mse_loss(pred * 0.5, target))


def _red(pixels: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [-1, 1] -> where the red block is."""
    return (pixels[0] > 0.3) & (pixels[1] < -0.3)


@pytest.mark.parametrize("augment", [Augment(), Augment(crop_scale=0.6, rotation=20.0, color_jitter=0.1)])
def test_masks_follow_the_mirror_and_every_augmentation(tmp_path, augment):
    img, mask = _subject_left()
    img.save(tmp_path / "00.png")
    mask.save(tmp_path / "00-masklabel.png")
    dm = _concept(tmp_path, masked=True, latent_cache=False, augment=augment, flip_p=0.5)
    ds = dm.dataset(24)
    flips = set()
    for i in range(24):
        item = ds[i]
        red, m = _red(item["pixels"]), item["mask"][0] > 0.5
        flips.add(item["flip"])
        assert item["mask"].shape == (1, 64, 64)
        # the mask covers the red pixels (resampled edges differ by a pixel: bilinear image, nearest mask)
        iou = (red & m).sum() / (red | m).sum()
        assert iou > 0.85, (i, float(iou))
        if not augment.active:  # mirrored: the subject moves to the right half with its mask
            assert m[:, 32:].any() == item["flip"] and m[:, :32].any() != item["flip"]
    assert flips == {True, False}
    # unmasked steps are their own stream: the same flips and prompts as without masks
    plain = _concept(tmp_path, latent_cache=False, augment=augment, flip_p=0.5).dataset(24)
    assert [plain[i]["flip"] for i in range(24)] == [ds[i]["flip"] for i in range(24)]


def test_unmasked_probability_is_a_share_of_samples(tmp_path):
    img, mask = _subject_left()
    img.save(tmp_path / "00.png")
    mask.save(tmp_path / "00-masklabel.png")
    ds = _concept(tmp_path, masked=True, mask={"unmasked_probability": 0.25}).dataset(400)
    share = 1 - np.mean([ds[i]["use_mask"] for i in range(400)])
    assert 0.15 < share < 0.35
    assert "pixels" not in ds[0]  # the latent cache path: masks come from the module's cache


def _module(tiny_frozen, **method_kw):
    from textinv.methods.textual_inversion.method import TextualInversion
    from textinv.training.module import ConceptModule, OptimConfig

    method = TextualInversion("<m>", "tree", **method_kw)
    return ConceptModule(tiny_frozen, method, OptimConfig()), method


def test_mask_cache_is_keyed_like_the_latents_and_weights_the_loss(tmp_path, tiny_frozen):
    img, mask = _subject_left()
    img.save(tmp_path / "00.png")
    mask.save(tmp_path / "00-masklabel.png")
    dm = _concept(tmp_path, masked=True)
    module, _ = _module(tiny_frozen)
    module.masking = dm.masking
    module.build_latent_cache(dm.pixel_tensor(), masks=dm.mask_tensor())
    h, w = module.latent_mean.shape[-2:]
    assert module.latent_masks.shape == (1, 2, 1, h, w)
    assert torch.equal(module.latent_masks[0, 1], module.latent_masks[0, 0].flip(-1))
    assert module.latent_masks[0, 0, 0, :, : w // 2].sum() > 0 and module.latent_masks[0, 0, 0, :, w // 2 + 1:].sum() == 0
    batch = {"index": torch.tensor([0, 1]), "image": torch.tensor([0, 0]), "flip": torch.tensor([False, True]),
             "prompt": ["a photo of <m>"] * 2, "use_mask": torch.tensor([True, True])}
    weights = module.loss_weights(batch, (h, w))
    assert torch.equal(weights[1], weights[0].flip(-1)) and weights.min() == pytest.approx(dm.masking.floor)
    masked = module.loss(batch)
    module.masking = None
    plain = module.loss(batch)  # same samples, same noise: only the weighting differs
    assert masked != plain and torch.isfinite(masked)
    module.masking = dm.masking
    module.latent_masks = torch.ones_like(module.latent_masks)
    assert module.loss(batch).item() == pytest.approx(plain.item(), rel=1e-5)  # a full mask is the plain loss


def test_norm_rescale_logs_and_pull(tiny_frozen):
    module, method = _module(tiny_frozen, norm_rescale=True)
    ref = method.reference[0]
    weight = tiny_frozen.text_encoders[0].get_input_embeddings().base.weight
    assert ref == pytest.approx(weight.float().norm(dim=1).median().item())
    with torch.no_grad():
        method.vectors.mul_(37.0)
    method.after_step()
    assert method.norms()[0, 0] == pytest.approx(ref, rel=1e-5)
    strength = method.strength()
    assert set(strength) == {"norm/vocab_median", "norm/vector0"} and strength["norm/vector0"] == pytest.approx(ref, rel=1e-5)
    assert method.regularization() is None
    assert method.identity()["norm_rescale"] is True

    _, pulled = _module(_fresh(), init_pull=0.5)
    assert pulled.regularization().item() == 0  # at the initializer
    with torch.no_grad():
        pulled.vectors.add_(1.0)
    reg = pulled.regularization()
    assert reg.item() == pytest.approx(0.5 * pulled.vectors.shape[1])
    reg.backward()
    assert torch.allclose(pulled.vectors.grad, torch.full_like(pulled.vectors, 1.0))  # d/dv 0.5 |v - v0|^2
    before = pulled.norms().clone()
    pulled.after_step()  # rescale off: untouched
    assert torch.equal(pulled.norms(), before)


def _fresh():
    from textinv.models.frozen_sd import ModelSource

    return ModelSource("tiny").load()


def test_toy_world_draws_masks_of_its_shapes(tmp_path):
    from textinv.toyworld.draw import draw_concept

    draw_concept(tmp_path, n=2, masks=True, shape="square", color="red", style="filled", background="white")
    images, _, masks = load_concept(tmp_path, 64, masked=True)
    for img, m in zip(images, masks):
        red = np.asarray(img)[..., 1] < 128  # filled red square on white
        inside = np.asarray(m) > 127
        assert (red != inside).mean() < 0.02
    draw_concept(tmp_path, n=2, masks=False, shape="square", color="red", style="filled", background="white")
    assert not list(tmp_path.glob("*-masklabel.png"))  # a redraw without masks leaves none behind


def test_web_page_plots_the_logged_norms_with_the_reference(tmp_path):
    from textinv.app.run_page import norm_points

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("step,loss,norm/vector0,norm/vocab_median\n0,1.0,0.5,0.4\n"
                                                  "10,0.9,0.7,0.4\n")
    lines = norm_points(tmp_path)
    assert lines == {"vector0": [(0, 0.5), (10, 0.7)], "vocab median": [(0, 0.4), (10, 0.4)]}
