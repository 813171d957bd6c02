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

# Measured on this very run (2-core CPU, one thread, seed 0, weights of recipe t2i_steps=4000, offset noise 0.15)
# before the margins were set: reconstruction 0.272 -> 0.461 (+0.189); "a photo of S*" images showing a heart
# 12% -> 56%, orange 12% -> 94%; over the three editability prompts the concept's shape and colour 15% -> 51%
# (mean of both); each prompt's background asked for: 100% of images, against 0% for the same seeds not asking
# (16 images each). Margins keep about half of each measured effect (a quarter of it off each end of a rate).
# The sampler is DDIM 20 (the light protocol's, the closest to DDIM 50: README "Evaluation cost"), not the full
# protocol's 50: the same effects (DDIM 50: +0.153; heart 25% -> 56%, orange 31% -> 81%, look 15% -> 52%) at 2/5
# of the evaluation's cost, which was 80% of this run.
RECONSTRUCTION_GAIN = 0.09
SHAPE_AFTER, SHAPE_BEFORE = 0.45, 0.23
COLOR_AFTER, COLOR_BEFORE = 0.73, 0.33
EDIT_LOOK_GAIN = 0.18
BACKGROUND_FOLLOWED = 0.5  # share of images turned to the asked background, over the same seeds not asking
STEPS = 200  # experiment=toyworld's default, with its learning rate
ARGS = ["experiment=toyworld", "concept=toy_heart", f"steps={STEPS}", "logger=csv", "~callbacks.progress_bar",
        f"eval.every_n_steps={STEPS}", "eval.at_steps=[0]", "eval.num_images=16", "eval.sampler_steps=20",
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
    from textinv.toyworld.models import load_classifier

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
    """The learned word still brings its look inside longer prompts (mean over them of shape and colour)."""
    _, _, before, after = learned

    def look(entries):
        return sum((e["concept"]["shape"] + e["concept"]["color"]) / 2 for e in entries) / len(entries)

    assert look(after[1:]) - look(before[1:]) >= EDIT_LOOK_GAIN


def test_the_background_an_editability_prompt_asks_for_is_drawn(learned):
    """Followed means: the asked background, far more often than the same seeds show it unasked (a model that
    takes backgrounds from the noise seed passes a bare rate, not this)."""
    _, _, _, after = learned
    asking = [e for e in after if "background" in e["asked"]]
    assert [e["asked"]["background"] for e in asking] == ["green", "black", "blue"]
    for entry in asking:
        lift = entry["prompt"]["background"] - entry["same_seeds_unasked"]["background"]
        assert lift >= BACKGROUND_FOLLOWED, entry["template"]
