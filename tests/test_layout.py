"""One writer and one reader of every name in a run folder (textinv.runs.layout), and one evaluation
schedule (textinv.evaluation.schedule) that the training callback and the plan both follow."""

import pytest

from textinv.evaluation.evaluator import EvalConfig
from textinv.evaluation.schedule import FULL, LIGHT, evaluation_schedule, protocols_at
from textinv.runs import layout


@pytest.mark.parametrize("p, k, digits, name", [(3, 7, 3, "p03-007.png"), (0, 63, 3, "p00-063.png"),
                                                (None, 7, 4, "0007.png"), (1, 12, 4, "p01-0012.png")])
def test_image_names_written_and_read_back(p, k, digits, name):
    """Evaluation images are pNN-KKK.png, generate.py's KKKK.png / pNN-KKKK.png: one writer, one parser."""
    assert layout.image_name(p, k, digits) == name
    assert layout.parse_image_name(name) == (p, k)


@pytest.mark.parametrize("name", ["prompts.json", "p03.png", "p03-007.jpg", "grid.png", "p3-007.png"])
def test_other_files_are_not_images_of_a_prompt(name):
    assert layout.parse_image_name(name) is None


def test_prompt_images_in_seed_order(tmp_path):
    for k in (10, 2, 0, 1):
        (tmp_path / layout.image_name(0, k)).write_bytes(b"")
    (tmp_path / layout.image_name(1, 0)).write_bytes(b"")
    (tmp_path / "p00-notes.png").write_bytes(b"")
    assert [f.name for f in layout.prompt_images(tmp_path, 0)] == ["p00-000.png", "p00-001.png", "p00-002.png",
                                                                   "p00-010.png"]


def test_image_folders_and_run_files(tmp_path):
    assert layout.image_folder_name(500, FULL) == "step000500"
    assert layout.image_folder_name(500, LIGHT) == "step000500-light"
    assert layout.image_folder_name(None, LIGHT) == "baseline-light"
    assert layout.parse_image_folder_name("step000500-light", LIGHT) == 500
    assert layout.parse_image_folder_name("step000500-light", FULL) is None
    assert layout.parse_image_folder_name("step000500", FULL) == 500
    assert layout.parse_image_folder_name("baseline", FULL) is None
    run = tmp_path / "run"
    assert layout.metrics_file(run) == run / "eval" / "metrics.json"
    assert layout.finished_marker(run) == run / "run.json"
    assert layout.last_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    assert layout.image_folder(run, 4, LIGHT) == run / "eval" / "images" / "step000004-light"


def callback_schedule(ev, steps):
    """What EvaluationCallback evaluates step by step: step 0 at train start, each later step at its batch
    end, the last one at train end."""
    out = [(s, protocols_at(ev, s, final=False)) for s in range(steps)]
    out.append((steps, protocols_at(ev, steps, final=True)))
    return [(s, ps) for s, ps in out if ps]


@pytest.mark.parametrize("kw", [{}, {"at_steps": [0]}, {"at_steps": [0, 3], "every_n_steps": 2},
                                {"every_n_steps": 0, "at_end": False}, {"every_n_steps": 4},
                                {"light": {"enabled": False}, "at_steps": [0]}, {"enabled": False}])
def test_the_plan_lists_what_the_callback_evaluates(kw):
    ev = EvalConfig(**{"every_n_steps": 2, **kw})
    assert evaluation_schedule(ev, 8) == callback_schedule(ev, 8)


def test_light_during_training_light_and_full_at_the_end_and_the_baseline_once():
    ev = EvalConfig(every_n_steps=2, at_steps=[0])
    names = [(s, [p.name for p in ps]) for s, ps in evaluation_schedule(ev, 4)]
    assert names == [(0, [LIGHT]), (2, [LIGHT]), (4, [LIGHT, FULL])]
    assert [(s, [p.name for p in ps]) for s, ps in evaluation_schedule(ev, 4, baseline=True)] == [(0, [LIGHT, FULL])]
    off = EvalConfig(every_n_steps=0, at_end=False)
    assert evaluation_schedule(off, 4) == [] and evaluation_schedule(off, 4, baseline=True) != []
