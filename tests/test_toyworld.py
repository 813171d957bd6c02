"""The miniature world: deterministic drawing, captions that keep its secrets, shipped weights that load
through the real code paths, and a pretraining that resumes to the same weights."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.toyworld import TOYWORLD_CLASSIFIER, TOYWORLD_CLIP, TOYWORLD_SD, TOYWORLD_WEIGHTS
from textinv.toyworld.world import (COLORS, RESERVED_LOOKS, SHAPES, STYLE_PHRASE, caption_at, render, rng_for,
                                    sample_scene, scene_at)

ROOT = Path(__file__).resolve().parents[1]


def test_scenes_and_pixels_are_a_function_of_seed_and_index():
    a, b = scene_at(3, 17), scene_at(3, 17)
    assert a == b and scene_at(3, 18) != a
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    assert render(a).size == (64, 64)
    assert caption_at(3, 17, 0) == caption_at(3, 17, 0)


def test_every_scene_keeps_its_shape_visible_and_captions_speak_the_template_language():
    scenes = [scene_at(0, i) for i in range(2000)]
    assert all(s.background != s.color for s in scenes)
    assert {s.shape for s in scenes} == set(SHAPES) and {s.color for s in scenes} == set(COLORS)
    captions = [caption_at(0, i, 0) for i in range(2000)]
    assert all(c.startswith(("a photo of", "a drawing", "a painting", "a rendering", "a picture", "a cropped",
                             "a close-up", "a good photo", "a rendition", "a bright photo")) for c in captions)
    assert any(" shape" in c or " object" in c for c in captions)  # the generic words an initializer can use


def test_the_dotted_rendering_and_the_reserved_looks_are_never_named():
    named_dotted, reserved_full = 0, 0
    for i in range(4000):
        scene = scene_at(0, i)
        for draw in range(3):
            text = caption_at(0, i, draw)
            named_dotted += "dot" in text
            for look in RESERVED_LOOKS:
                if all(getattr(scene, k) == v for k, v in look.items()):
                    reserved_full += (look["shape"] in text and look["color"] in text
                                      and (STYLE_PHRASE[look["style"]] in text or look["style"] in text))
    assert named_dotted == 0 and reserved_full == 0
    # ...while the look itself is drawn: pretraining sees it, unnamed
    assert any(all(getattr(scene_at(0, i), k) == v for k, v in RESERVED_LOOKS[0].items()) for i in range(4000))


def test_fixed_attributes_are_kept_and_the_rest_varies():
    rng = rng_for(0, 0, 5)
    scenes = [sample_scene(rng, shape="star", color="red", background=("white", "gray")) for _ in range(30)]
    assert {s.shape for s in scenes} == {"star"} and {s.color for s in scenes} == {"red"}
    assert {s.background for s in scenes} == {"white", "gray"}
    assert len({(s.x, s.y) for s in scenes}) == 30 and len({s.size for s in scenes}) > 1


@pytest.fixture(scope="module")
def classifier():
    from textinv.toyworld.models import load_classifier

    return load_classifier(TOYWORLD_CLASSIFIER)


def test_draw_command_writes_a_concept_set_the_classifier_recognises(tmp_path, classifier):
    out = tmp_path / "red star"
    proc = subprocess.run([sys.executable, "-m", "textinv", "toyworld", "draw", "--shape", "star", "--color", "red",
                           "--background", "white", "--n", "4", "--out", str(out)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00.png", "01.png", "02.png", "03.png"]
    from textinv.toyworld.models import pil_to_unit

    pred = classifier.predict(pil_to_unit([Image.open(f) for f in files]))
    assert pred["shape"] == ["star"] * 4 and pred["color"] == ["red"] * 4 and pred["background"] == ["white"] * 4
    bad = subprocess.run([sys.executable, "-m", "textinv.toyworld", "draw", "--shape", "pentagon", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "choose from circle" in bad.stderr and not (tmp_path / "x").exists()


def test_shipped_weights_match_their_checksums():
    sums = (TOYWORLD_WEIGHTS / "SHA256SUMS").read_text().split("\n")
    entries = [line.split("  ", 1) for line in sums if line]
    assert len(entries) >= 12
    for digest, name in entries:
        assert hashlib.sha256((TOYWORLD_WEIGHTS / name).read_bytes()).hexdigest() == digest, name


def test_the_default_recipe_is_the_one_the_shipped_weights_were_trained_with():
    """`make toyworld` must rebuild what is committed: a recipe change belongs with retrained weights."""
    import json
    from dataclasses import asdict

    from textinv.toyworld.pretrain import Recipe

    assert asdict(Recipe()) == json.loads((TOYWORLD_WEIGHTS / "recipe.json").read_text())


def test_model_toy_loads_through_the_diffusers_folder_code_path():
    from diffusers import UNet2DConditionModel

    from textinv.toyworld.plugins import model_source

    source = model_source()  # model=toy's _target_
    assert source.source == "hub" and Path(source.path) == TOYWORLD_SD  # the same path as model.path=...
    info = source.info()
    assert (info.hidden_dim, info.vae_scale_factor, info.prediction_type) == (64, 4, "epsilon")
    frozen = source.load()
    reference = UNet2DConditionModel.from_pretrained(TOYWORLD_SD, subfolder="unet")
    assert torch.equal(frozen.unet.conv_in.weight, reference.conv_in.weight)
    assert frozen.vae.config.scaling_factor != 1.0  # measured from the latents, like SD's 0.18215
    ids = frozen.tokenizer("a photo of a red star").input_ids
    assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) == 8  # the real CLIP tokenizer


def test_world_clip_scores_matching_captions_above_others():
    from textinv.evaluation.metrics import ClipScorer

    from textinv.toyworld.plugins import WorldClip

    scorer = ClipScorer(WorldClip().scorer_arch(), None)  # experiment=toyworld's eval.clip
    assert scorer.arch == f"local-dir:{TOYWORLD_CLIP}"
    images = [render(sample_scene(rng_for(9, i, 0), shape="circle", color=c, background="white", style="filled",
                                  size="large")) for i, c in enumerate(("red", "blue", "yellow"))]
    texts = ["a photo of a red circle", "a photo of a blue circle", "a photo of a yellow circle"]
    sim = scorer.image_embeddings(images) @ scorer.text_embeddings(texts).T
    assert sim.argmax(1).tolist() == [0, 1, 2]


def _micro(work: Path, out: Path, minutes: float | None) -> int:
    from textinv.toyworld.pretrain import Recipe, pretrain

    recipe = Recipe(num_scenes=48, vae_steps=2, vae_batch=4, t2i_steps=2, t2i_batch=4, clip_steps=2, clip_batch=8,
                    cls_steps=2, cls_batch=4, report_images=2, report_drawings=8)
    try:
        pretrain(work, out, recipe, minutes)
    except SystemExit as stop:
        return int(stop.code)
    return 0


def test_pretraining_in_pieces_gives_the_same_weights_as_one_go(tmp_path):
    assert _micro(tmp_path / "w1", tmp_path / "o1", None) == 0
    pieces = 1
    while _micro(tmp_path / "w2", tmp_path / "o2", 1e-9) == 75:  # stop after every single step
        pieces += 1
    assert pieces >= 4  # it really was cut into pieces (a stage's last step rolls into the next stage's first)
    one = (tmp_path / "o1" / "SHA256SUMS").read_text()
    many = (tmp_path / "o2" / "SHA256SUMS").read_text()
    weights = [line for line in one.splitlines() if "safetensors" in line]
    assert len(weights) == 5 and all(line in many for line in weights)
    curve = (tmp_path / "o2" / "curves" / "t2i.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in curve[1:]] == ["0", "1"]  # no step logged twice


def test_a_drawn_concept_is_redrawn_from_its_current_spec_and_a_users_folder_is_never_touched(tmp_path, monkeypatch):
    """A changed `draw:` spec (or renderer) must not train on the old pictures left in data/concepts/."""
    from textinv.data.datamodule import Concept, ConceptDataModule
    from textinv.toyworld.draw import draw_concept

    monkeypatch.chdir(tmp_path)

    def loaded(draw):
        dm = ConceptDataModule(Concept("toy_x", "<x>", "shape", draw=draw, drawer=draw_concept), resolution=64)
        dm.load()
        return [np.asarray(img) for img in dm.images]

    first = loaded({"shape": "heart", "color": "orange", "style": "hatched", "n": 4})
    second = loaded({"shape": "heart", "color": "orange", "style": "outlined", "n": 3})
    assert len(first) == 4 and len(second) == 3  # the old fourth picture is gone too
    assert all(a.tobytes() != b.tobytes() for a, b in zip(first, second))
    assert sorted(p.name for p in (tmp_path / "data/concepts/toy_x").iterdir()) == [".drawn.json", "00.png",
                                                                                  "01.png", "02.png"]

    mine = tmp_path / "data/concepts/toy_mine"
    mine.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(mine / "photo.png")
    dm = ConceptDataModule(Concept("toy_mine", "<m>", "shape", draw={"shape": "star"}, drawer=draw_concept),
                           resolution=64)
    dm.load()
    assert [p.name for p in mine.iterdir()] == ["photo.png"] and len(dm.images) == 1
