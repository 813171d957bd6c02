import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DREAMBOOTH
from textinv.data.datamodule import Augment, Concept, ConceptDataModule, StepSampler
from textinv.errors import UserError
from textinv.data.images import load_concept_images, load_image
from textinv.data.templates import OBJECT_TEMPLATES, STYLE_TEMPLATES


def concept(folder, kind="object"):
    return Concept(name="t", placeholder="<t-toy>", initializer="toy", kind=kind, data_dir=str(folder))


def test_templates_hold_the_placeholder(demo_images):
    for kind, templates in (("object", OBJECT_TEMPLATES), ("style", STYLE_TEMPLATES)):
        dm = ConceptDataModule(concept(demo_images, kind), resolution=32, steps=10)
        prompts = {dm.dataset(200)[i]["prompt"] for i in range(200)}
        assert all("<t-toy>" in p for p in prompts)
        assert prompts <= {t.format("<t-toy>") for t in templates} and len(prompts) > len(templates) // 2


def test_samples_are_a_function_of_seed_and_index(demo_images):
    a = ConceptDataModule(concept(demo_images), resolution=32, seed=1).dataset(40)
    b = ConceptDataModule(concept(demo_images), resolution=32, seed=1).dataset(40)
    c = ConceptDataModule(concept(demo_images), resolution=32, seed=2).dataset(40)
    key = lambda ds: [(ds[i]["image"], ds[i]["flip"], ds[i]["prompt"]) for i in range(40)]
    assert key(a) == key(b) != key(c)
    # every image once per len(images) samples, like shuffled epochs
    assert sorted(a[i]["image"] for i in range(4)) == [0, 1, 2, 3]


def test_step_sampler_resume_and_ranks():
    full = list(StepSampler(0, 6, batch_size=2))
    resumed = StepSampler(3, 6, batch_size=2)
    assert full[6:] == list(resumed) and len(resumed) == len(full)  # resume at micro-batch 3
    r0, r1 = list(StepSampler(0, 3, 2, rank=0, world=2)), list(StepSampler(0, 3, 2, rank=1, world=2))
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(12))


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "a.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "a.jpg", 40)
    assert out.size == (40, 80)
    top = np.asarray(out)[5, 20]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def test_modes_converted_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(tmp_path / "rgba.png")
    Image.new("L", (32, 32), 100).save(tmp_path / "gray.png")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(tmp_path / "deep.png")
    Image.new("P", (32, 32), 3).save(tmp_path / "pal.gif")
    images, files = load_concept_images(tmp_path, 32)
    by = {f.name: np.asarray(i) for f, i in zip(files, images)}
    assert all(i.mode == "RGB" for i in images) and len(images) == 5
    assert (by["rgba.png"] == 255).all()
    assert (by["gray.png"] == 100).all()
    assert by["cmyk.jpg"][..., 0].mean() > 200 and by["cmyk.jpg"][..., 1].mean() < 60
    assert (by["deep.png"] == 255).all()


def test_large_image_decoded_small(tmp_path):
    Image.new("RGB", (4000, 3000), (10, 200, 10)).save(tmp_path / "big.jpg", quality=80)
    out = load_image(tmp_path / "big.jpg", 64)
    assert min(out.size) == 64 and max(out.size) == 85


def test_unreadable_file_skipped_with_warning(demo_images, tmp_path, caplog):
    for p in demo_images.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with caplog.at_level(logging.WARNING):
        images, files = load_concept_images(tmp_path, 32)
    assert len(images) == 4 and "broken.jpg" in caplog.text


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "has no images"),
    (lambda p: (p / "x.png").write_bytes(b"nope") and p, "no readable image"),
])
def test_folder_errors(tmp_path, setup, message):
    folder = setup(tmp_path)
    with pytest.raises(UserError, match=message):
        ConceptDataModule(concept(folder), resolution=32).load()


def test_captions(demo_images, tmp_path):
    for p in demo_images.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "00.txt").write_text("{} on a red carpet")
    (tmp_path / "01.txt").write_text("wearing a hat")
    ds = ConceptDataModule(concept(tmp_path), resolution=32).dataset(100)
    prompts = {ds[i]["image"]: ds[i]["prompt"] for i in range(100)}
    assert prompts[0] == "<t-toy> on a red carpet"
    assert prompts[1].endswith(", wearing a hat") and "<t-toy>" in prompts[1]


def test_augment_turns_off_latent_cache_and_gives_pixels(demo_images):
    plain = ConceptDataModule(concept(demo_images), resolution=32)
    aug = ConceptDataModule(concept(demo_images), resolution=32, augment=Augment(crop_scale=0.5, rotation=10))
    assert plain.use_cache and not aug.use_cache
    assert "pixels" not in plain.dataset(4)[0]
    a, b = aug.dataset(4)[1]["pixels"], aug.dataset(4)[1]["pixels"]
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    no_cache = ConceptDataModule(concept(demo_images), resolution=32, latent_cache=False)
    item = no_cache.dataset(4)[0]
    expected = plain.pixel_tensor()[item["image"]]
    assert torch.allclose(item["pixels"], expected.flip(-1) if item["flip"] else expected)


@pytest.mark.skipif(not SHARED_DREAMBOOTH.is_dir(), reason="../shared/data/dreambooth not present")
@pytest.mark.parametrize("subject", ["backpack", "cat", "clock", "dog", "duck_toy", "grey_sloth_plushie",
                                     "red_cartoon", "teapot"])
def test_real_dreambooth_photos(subject):
    dm = ConceptDataModule(concept(SHARED_DREAMBOOTH / subject), resolution=64)
    dm.load()
    pixels = dm.pixel_tensor()
    assert pixels.shape[0] == len(list((SHARED_DREAMBOOTH / subject).glob("*.jpg"))) >= 4
    assert pixels.shape[1:] == (3, 64, 64) and pixels.std() > 0.05
