"""Proof that training learns: textual inversion in the pretrained miniature world (textinv.toyworld).

One CI-sized run of the object concept toy_heart (an orange outlined heart the world never names) through
the real train.py. Its step-0 evaluation is the SD row (the initializer word "shape": step 0 reproduces
the baseline pixel for pixel, see test_table.py); the final evaluation is the SD + TI row. It fails when
learning breaks: a wrong loss target, latent scale, placeholder swap or latent cache leaves the images
at the initializer's chance level. Margins: see MEASURED below.
"""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import compose, run_script
from textinv.toyworld.draw import draw_concept

# Measured on this very run (2-core CPU, seed 0) before the margins were set: reconstruction 0.177 -> 0.280
# (+0.104); "a photo of S*" images showing a heart 19% -> 100%, orange 12% -> 38% (16 images each).
# Margins keep about half of each measured effect.
RECONSTRUCTION_GAIN = 0.05
SHAPE_AFTER, SHAPE_BEFORE = 0.7, 0.4
COLOR_AFTER, COLOR_BEFORE = 0.25, 0.2
BACKGROUND_FOLLOWED = 0.3  # share of images turned green by asking, over the same seeds not asking
STEPS = 200  # experiment=toyworld's default, with its learning rate
ARGS = ["experiment=toyworld", "concept=toy_heart", f"steps={STEPS}", "logger=csv", "~callbacks.progress_bar",
        f"eval.every_n_steps={STEPS}", "eval.at_steps=[0]", "eval.num_images=16",
        "eval.baseline_cache=null", "eval.light.enabled=false"]  # the margins were measured with one protocol


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """(step-0 metrics, final metrics, step-0 attributes, final attributes) of one run."""
    run = tmp_path_factory.mktemp("toy_heart") / "run"
    data = tmp_path_factory.mktemp("toy_heart_images")
    spec = OmegaConf.to_container(compose("experiment=toyworld", "concept=toy_heart").concept.draw)
    draw_concept(data, **spec)
    proc = run_script("train.py", *ARGS, f"concept.data_dir={data}", f"hydra.run.dir={run}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from textinv.toyworld import TOYWORLD_CLASSIFIER
    from textinv.toyworld.attributes import run_attributes
    from textinv.toyworld.export import load_classifier

    evaluations = json.loads((run / "eval" / "metrics.json").read_text())["evaluations"]
    by_step = {e["step"]: e for e in evaluations}
    attributes = run_attributes(run, load_classifier(TOYWORLD_CLASSIFIER))["evaluations"]
    return by_step[0], by_step[STEPS], attributes["step000000"], attributes[f"step{STEPS:06d}"]


def test_reconstruction_rises_well_above_the_initializer_word(learned):
    start, end, _, _ = learned
    assert end["reconstruction"] - start["reconstruction"] >= RECONSTRUCTION_GAIN


def test_the_concept_look_appears_far_more_often_than_with_the_initializer_word(learned):
    _, _, before, after = learned
    look_before, look_after = before[0]["concept"], after[0]["concept"]  # "a photo of S*" / "a photo of shape"
    assert look_after["shape"] >= SHAPE_AFTER and look_before["shape"] <= SHAPE_BEFORE
    assert look_after["color"] >= COLOR_AFTER and look_before["color"] <= COLOR_BEFORE


def test_editability_prompts_keep_the_concept(learned):
    """The learned word still works inside longer prompts."""
    _, _, before, after = learned
    for entry, base in zip(after[1:], before[1:]):
        assert entry["concept"]["shape"] >= SHAPE_AFTER and base["concept"]["shape"] <= SHAPE_BEFORE


@pytest.mark.xfail(strict=True, reason="the shipped text-to-image model draws backgrounds from the noise seed, "
                   "not the caption (weights/report.json: background at chance); measured: 'on a green background' "
                   "56% green vs 50% for the same seeds without asking (make demo). Strict: a retrain that fixes it "
                   "turns this into a failure, to be replaced by a plain test with a margin from the new figures.")
def test_on_a_green_background_is_followed(learned):
    """Followed means: more green backgrounds than the same seeds show when the prompt does not ask."""
    _, _, _, after = learned
    entry = next(e for e in after if e["asked"].get("background") == "green")
    assert entry["prompt"]["background"] - entry["same_seeds_unasked"]["background"] >= BACKGROUND_FOLLOWED
