"""Issue 11: evaluation at a fraction of the cost with the same final numbers.

- a tiered run (light protocol during training, full at the end) and a run with the full protocol at every
  evaluation and no validation loss (the behaviour before) end with the same images, scores and table;
- the plan (`plan=true`, no weights) and what a run spent (UNet forwards counted by a hook) agree;
- the fixed-batch validation loss is a logged curve and its early stop still ends with a full evaluation.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from conftest import SMALL_CLIP, compose, load_script, run_script, tiny_overrides

table = load_script("table")
figures = load_script("figures")

EVAL = ["eval.enabled=true", "eval.every_n_steps=2", "eval.num_images=2", "eval.sampler_steps=3",
        "eval.light.num_images=1", "eval.light.sampler_steps=2", *SMALL_CLIP, "eval.fid.weights=random",
        "callbacks.validation_loss.every_n_steps=2", "callbacks.validation_loss.batch_size=3"]
SCORES = ("reconstruction", "editability", "clip_i_all", "clip_t_all", "fid", "kid_mean", "kid_std", "is_mean",
          "num_images", "per_prompt")


def metrics(run) -> dict:
    return json.loads((run / "eval" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def pair(tmp_path_factory, demo_images):
    """The same 4-step training twice: tiered evaluation (default), and full protocol everywhere without the
    validation loss (what every run did before)."""
    from textinv.training.job import train

    root = tmp_path_factory.mktemp("tiers")
    cache = f"eval.baseline_cache='{root / 'cache'}'"
    tiered, full = root / "tiered", root / "full"
    train(compose(*tiny_overrides(tiered, demo_images, 4, *EVAL, cache)))
    train(compose(*tiny_overrides(full, demo_images, 4, *EVAL, cache, "eval.light.enabled=false",
                                  "callbacks.validation_loss.enabled=false")))
    base = root / "baseline"
    train(compose(*tiny_overrides(base, demo_images, 4, *EVAL, cache, "baseline=true")))
    return tiered, full, base


def test_final_table_numbers_identical_to_a_full_protocol_run(pair, tmp_path):
    tiered, full, base = pair
    mt, mf = metrics(tiered), metrics(full)
    # what each run evaluated: light during training (steps 0, 2) and at the end, then full once
    assert [(e["step"], e["protocol"]) for e in mt["evaluations"]] == [
        (0, "light"), (2, "light"), (4, "light"), (4, "full")]
    assert [(e["step"], e["protocol"]) for e in mf["evaluations"]] == [(0, "full"), (2, "full"), (4, "full")]
    # each record carries its own settings
    light = mt["evaluations"][0]["settings"]
    assert (light["protocol"], light["num_images"], light["sampler_steps"], light["scheduler"]) == ("light", 1, 2, "ddim")
    assert mt["evaluations"][0]["num_images"] == 1 * len(mt["evaluations"][0]["per_prompt"])
    assert mt["final"]["settings"] == mf["final"]["settings"] == mt["settings"]
    assert (mt["final"]["settings"]["scheduler"], mt["final"]["settings"]["sampler_steps"]) == ("ddim", 3)
    # same images ...
    a, b = tiered / "eval/images/step000004", full / "eval/images/step000004"
    names = sorted(p.name for p in a.glob("p*.png"))
    assert names and names == sorted(p.name for p in b.glob("p*.png")) and len(names) == mt["final"]["num_images"]
    for name in names:
        with Image.open(a / name) as x, Image.open(b / name) as y:
            assert x.tobytes() == y.tobytes(), name
    # ... same scores, exactly
    for key in SCORES:
        assert mt["final"][key] == mf["final"][key], key
    # ... and the same table, which says it reads full-protocol final evaluations only
    table.main([str(tiered), str(base), "--out", str(tmp_path / "a"), "--no-wandb"])
    table.main([str(full), str(base), "--out", str(tmp_path / "b"), "--no-wandb"])
    assert (tmp_path / "a/table.csv").read_text() == (tmp_path / "b/table.csv").read_text()
    md = (tmp_path / "a/table.md").read_text()
    assert "Only full-protocol final evaluations are tabulated" in md and "full protocol, model tiny" in md
    # CLIP-T compares with the original code's literal removal of the placeholder, and says so
    assert mt["settings"]["clip_t_text"] == "original"
    for entry in mt["final"]["per_prompt"]:
        assert entry["clip_t_text"] == entry["template"].replace("{}", "")


def test_plan_and_spent_agree_and_the_tiered_run_costs_less(pair):
    tiered, full, _ = pair
    for run in (tiered, full):
        cost = metrics(run)["cost"]
        plan, spent = cost["plan"], cost["spent"]
        assert spent["train_unet_forwards"] == plan["train_unet_forwards"] == 4 * 2  # 4 steps x batch 2
        assert spent["eval_unet_forwards"] == plan["eval_unet_forwards"] > 0
        assert spent["validation_unet_forwards"] == plan["validation_unet_forwards"]
        assert spent["wall_s"] >= spent["train_wall_s"] + spent["eval_wall_s"] - 1e-6 > 0
        assert json.loads((run / "run.json").read_text())["cost"]["spent"]["eval_unet_forwards"] == \
            spent["eval_unet_forwards"]
        columns = (run / "metrics.csv").read_text().splitlines()[0]
        assert "cost/eval_unet_forwards" in columns and "cost/train_wall_s" in columns
    # 5 prompts: light 5 x 1 image x 2 steps x 2 (guidance) at steps 0, 2, 4; full 5 x 2 x 3 x 2 at step 4
    assert metrics(tiered)["cost"]["plan"]["eval_unet_forwards"] == 3 * 20 + 60
    assert metrics(full)["cost"]["plan"]["eval_unet_forwards"] == 3 * 60
    assert metrics(tiered)["cost"]["spent"]["validation_unet_forwards"] == 3 * 3  # steps 0, 2, 4 x batch 3
    assert metrics(full)["cost"]["spent"]["validation_unet_forwards"] == 0


def test_validation_loss_is_a_logged_curve(pair):
    tiered, _, _ = pair
    curve = json.loads((tiered / "validation_loss.json").read_text())
    assert [p["step"] for p in curve["points"]] == [0, 2, 4] and curve["stopped_at"] is None
    assert all(p["loss"] > 0 for p in curve["points"])
    logged = (tiered / "metrics.csv").read_text()
    assert "val/dvar_loss" in logged.splitlines()[0]
    assert f"{curve['points'][-1]['loss']!r}"[:10] in logged


def test_baseline_is_scored_and_cached_per_protocol(pair, tmp_path):
    tiered, _, base = pair
    mb = metrics(base)
    assert [(e["step"], e["protocol"]) for e in mb["evaluations"]] == [(0, "light"), (0, "full")]
    assert (base / "eval/images/baseline-light").is_dir() and (base / "eval/images/baseline").is_dir()
    # the step-0 light images of the TI run are the baseline's light images (same vector, protocol, seeds)
    for f in sorted((base / "eval/images/baseline-light").glob("p*.png")):
        with Image.open(f) as x, Image.open(tiered / "eval/images/step000000-light" / f.name) as y:
            assert x.tobytes() == y.tobytes()
    assert len(list((tiered.parent / "cache").iterdir())) == 2  # one image cache per protocol
    # a steps figure uses one protocol throughout (light: every step has it) and says which
    summary = figures.main(["steps", "--run", str(tiered), "--baseline", str(base), "--out", str(tmp_path / "s")])
    assert summary["protocol"] == "light" and summary["steps"] == [0, 2, 4]
    assert all(row["folder"].endswith("-light") for row in summary["rows"])


def test_early_stop_on_the_validation_loss_still_ends_with_a_full_evaluation(tmp_path, demo_images):
    from textinv.training.job import train

    run = tmp_path / "stop"
    train(compose(*tiny_overrides(run, demo_images, 12, *EVAL, f"eval.baseline_cache='{tmp_path / 'cache'}'",
                                  "callbacks.validation_loss.every_n_steps=1", "callbacks.validation_loss.window=2",
                                  "callbacks.validation_loss.early_stop=true", "callbacks.validation_loss.threshold=1.0",
                                  "callbacks.validation_loss.min_steps=3", "eval.every_n_steps=0")))
    curve = json.loads((run / "validation_loss.json").read_text())
    stop = curve["stopped_at"]
    assert stop is not None and 3 <= stop < 12
    last = curve["points"][-1]
    assert last["step"] == stop and last["normalized_variance"] < 1.0
    done = json.loads((run / "run.json").read_text())
    assert done["step"] == stop and done["validation_loss"]["stopped_early_at"] == stop
    final = metrics(run)["final"]
    assert final["step"] == stop and final["protocol"] == "full"
    assert (run / "demo-toy.pt").is_file()


def test_normalized_variance_is_the_dvar_ratio():
    from textinv.training.validation_loss import normalized_variance

    assert normalized_variance([1.0, 2.0], 3) is None  # fewer values than the window
    # Var([2, 3]) / Var([0, 1, 2, 3]) = 0.25 / 1.25
    assert normalized_variance([0.0, 1.0, 2.0, 3.0], 2) == pytest.approx(0.2)
    assert normalized_variance([5.0, 5.0, 5.0], 2) == 0.0


def test_plan_true_prints_json_per_run_without_weights(tmp_path):
    """model=sd15 has no weights on this machine: the plan must not need them."""
    proc = run_script("train.py", "concept=deku_tree", "plan=true", f"hydra.run.dir='{tmp_path / 'r'}'", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plans = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(plans) == 1
    plan = plans[0]
    assert plan["train_micro_steps"] == 3000 * 4 == plan["train_unet_forwards"]
    # 5 prompts (the reconstruction prompt + the concept's 4, which hold the original 3); light 8 x 20 steps at
    # 500 ... 3000, then the full protocol 64 x 50 at 3000; guidance doubles every forward
    assert [(e["step"], e["protocol"]) for e in plan["evaluations"]] == [
        (s, "light") for s in (500, 1000, 1500, 2000, 2500, 3000)] + [(3000, "full")]
    assert plan["evaluations"][0] == {"step": 500, "protocol": "light", "images": 40, "sampler_steps": 20,
                                      "scheduler": "ddim", "unet_forwards": 40 * 20 * 2}
    assert plan["evaluations"][-1]["unet_forwards"] == 320 * 50 * 2
    assert plan["eval_unet_forwards"] == 6 * 1600 + 32000
    assert plan["validation_unet_forwards"] == (1 + 3000 // 25) * 8
    sweep = run_script("train.py", "-m", "concept=deku_tree", "seed=0,1", "eval.light.enabled=false", "plan=true",
                       f"hydra.sweep.dir='{tmp_path / 's'}'", timeout=120)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    lines = [json.loads(line) for line in sweep.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and all(p["eval_unet_forwards"] == 6 * 32000 for p in lines)


def test_progress_bar_counts_steps_not_epochs():
    from textinv.training.progress import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_steps=60)
    assert bar._get_train_description(0) == "Training (max 60 steps)"


def test_tables_read_full_protocol_finals_only(tmp_path, caplog):
    """A light evaluation after the last full one never becomes a run's final; a run with light ones only
    is left out of tables with a warning."""
    from textinv.errors import UserError
    from textinv.runs.results import load_run, load_runs

    def run(name: str, evaluations: list[dict]):
        folder = tmp_path / "runs" / name
        (folder / "eval").mkdir(parents=True)
        header = {"concept": "c", "kind": "object", "placeholder": "<c>", "initializer": "x", "baseline": False,
                  "model": "m", "seed": 0, "settings": {}}
        (folder / "eval" / "metrics.json").write_text(json.dumps({**header, "evaluations": evaluations}))
        (folder / "run.json").write_text("{}")
        return folder

    record = lambda step, protocol, value: {"step": step, "protocol": protocol, "reconstruction": value,  # noqa: E731
                                            "editability": value, "num_images": 1, "per_prompt": []}
    mixed = run("mixed", [record(2, "light", 0.1), record(4, "full", 0.5), record(4, "light", 0.9)])
    old = run("old", [{k: v for k, v in record(4, "full", 0.3).items() if k != "protocol"}])  # before protocols
    assert load_run(mixed).final["reconstruction"] == 0.5 and load_run(old).final["reconstruction"] == 0.3
    assert [e["step"] for e in load_run(mixed).curve("light")] == [2, 4]
    run("light_only", [record(2, "light", 0.1)])
    with caplog.at_level("WARNING", logger="textinv.runs.results"):
        kept = load_runs([tmp_path / "runs"])
    assert sorted(r.run_dir.name for r in kept) == ["mixed", "old"] and "without a full-protocol" in caplog.text
    with pytest.raises(UserError, match="full-protocol"):
        load_runs([tmp_path / "runs" / "light_only"])
