"""experiments/table.py and experiments/figures.py over real runs: a baseline and a short TI run on the
tiny model (through textinv.training.job.train), checked against the runs' own eval/metrics.json."""

from __future__ import annotations

import csv
import json
import shutil
import statistics

import pytest
from PIL import Image

from conftest import compose, load_script, run_script, tiny_overrides

EVAL = ["trainer.log_every_n_steps=1", "eval.enabled=true", "eval.every_n_steps=2", "eval.num_images=2", "eval.sampler_steps=3", "eval.clip.weights=random",
        "eval.fid.weights=random", "eval.light.num_images=1", "eval.light.sampler_steps=2"]
KEYS = {"reconstruction": "reconstruction", "editability": "editability", "fid": "fid", "kid": "kid_mean",
        "is": "is_mean"}


table = load_script("table")
figures = load_script("figures")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_images):
    """study/{baseline,ti}: the SD row and the SD + TI row of one concept, same eval prompts and seeds."""
    from textinv.training.job import train

    root = tmp_path_factory.mktemp("study")
    cache = root / "baseline_cache"
    base, ti = root / "sweep" / "baseline", root / "sweep" / "ti"
    train(compose(*tiny_overrides(base, demo_images, 4, *EVAL, f"eval.baseline_cache='{cache}'", "baseline=true")))
    train(compose(*tiny_overrides(ti, demo_images, 5, *EVAL, f"eval.baseline_cache='{cache}'", "eval.at_steps=[0]")))
    return base, ti


def metrics(run) -> dict:
    return json.loads((run / "eval" / "metrics.json").read_text())


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def test_table_rows_equal_the_runs_final_metrics(runs, tmp_path):
    base, ti = runs
    out = tmp_path / "table"
    files = table.main([str(ti), str(base), "--out", str(out), "--no-wandb"])
    rows = {r["model"]: r for r in read_csv(out / "table.csv")}
    assert list(rows) == ["SD", "SD + TI"]  # baseline row first, whatever the argument order
    for label, run in (("SD", base), ("SD + TI", ti)):
        final = metrics(run)["final"]
        row = rows[label]
        assert final["step"] == (0 if label == "SD" else 5)  # 5: evaluated at the end
        # run.json marks the run finished only once its final evaluation is on disk
        assert (run / "run.json").stat().st_mtime_ns >= (run / "eval" / "metrics.json").stat().st_mtime_ns
        for name, key in KEYS.items():
            assert num(row[f"{name}_mean"]) == pytest.approx(final[key], rel=0, abs=1e-12), (label, name)
            assert row[f"{name}_std"] == "" and row[f"{name}_n"] == "1"  # one run: no spread
        assert (row["runs"], row["concepts"], row["seeds"]) == ("1", "1", "1")
        assert int(row["images"]) == final["num_images"] == 2 * len(final["per_prompt"])
    md = (out / "table.md").read_text()
    base_final, ti_final = metrics(base)["final"], metrics(ti)["final"]
    assert f"| SD | {base_final['reconstruction']:.4f} | {base_final['editability']:.4f} |" in md
    assert f"| SD + TI | {ti_final['reconstruction']:.4f} | {ti_final['editability']:.4f} |" in md
    assert "over runs" in md and "0.7622" in md and "0.8077" in md and "mean nothing" in md
    per_run = read_csv(out / "runs.csv")
    assert [(r["model"], r["run_dir"]) for r in per_run] == [("SD", str(base.resolve())), ("SD + TI", str(ti.resolve()))]
    with Image.open(out / "tradeoff.png") as im:
        assert im.format == "PNG" and im.size == (768, 600)
    assert "wandb" not in files and not (out / "wandb").exists()
    # the sweep folder above both runs finds the same two runs and writes the same table
    table.main([str(base.parent), "--out", str(tmp_path / "sweep_table"), "--no-wandb"])
    assert (tmp_path / "sweep_table" / "table.csv").read_text() == (out / "table.csv").read_text()


def test_mean_and_sample_std_over_runs_and_unfinished_runs(runs, tmp_path):
    base, ti = runs
    sweep = tmp_path / "multirun"
    shutil.copytree(base, sweep / "0" / "base")
    finals = []
    for seed, shift in ((0, 0.0), (1, 0.05), (2, -0.02)):  # three "seeds" of the TI run, nested at any depth
        run = sweep / str(seed) / "deep" / "ti"
        shutil.copytree(ti, run)
        data = metrics(ti)
        data["seed"] = seed
        for ev in data["evaluations"]:
            ev["reconstruction"] += shift
            ev["editability"] -= shift
        data["final"] = data["evaluations"][-1]
        (run / "eval" / "metrics.json").write_text(json.dumps(data))
        finals.append(data["final"])
    unfinished = sweep / "9" / "ti"
    shutil.copytree(ti, unfinished)
    (unfinished / "run.json").unlink()

    table.main([str(sweep), "--out", str(tmp_path / "t"), "--no-wandb"])
    row = {r["model"]: r for r in read_csv(tmp_path / "t" / "table.csv")}["SD + TI"]
    assert (row["runs"], row["seeds"], row["concepts"]) == ("3", "3", "1")
    for name in ("reconstruction", "editability"):
        values = [f[name] for f in finals]
        assert num(row[f"{name}_mean"]) == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert num(row[f"{name}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert num(row["fid_std"]) == pytest.approx(0.0, abs=1e-9)  # FID untouched: identical copies
    assert "±" in (tmp_path / "t" / "table.md").read_text()

    table.main([str(sweep), "--out", str(tmp_path / "u"), "--no-wandb", "--include-unfinished"])
    assert {r["model"]: r for r in read_csv(tmp_path / "u" / "table.csv")}["SD + TI"]["runs"] == "4"


def test_table_cli_logs_an_offline_wandb_table(runs, tmp_path):
    base, ti = runs
    proc = run_script("experiments/table.py", str(base), str(ti), "--out", str(tmp_path / "w"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| SD + TI |" in proc.stdout
    offline = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_step_zero_reproduces_the_baseline_row(runs):
    """Before any update the placeholder holds the initializer word's vector: same prompts, same seeds, same
    (light) protocol, so the TI run's step-0 images are the baseline's images, pixel for pixel, and score the same."""
    base, ti = runs
    base_dir, step0 = base / "eval/images/baseline-light", ti / "eval/images/step000000-light"
    files = sorted(p.name for p in base_dir.glob("p*.png"))
    assert files and files == sorted(p.name for p in step0.glob("p*.png"))
    for name in files:
        with Image.open(base_dir / name) as a, Image.open(step0 / name) as b:
            assert a.tobytes() == b.tobytes(), name
    first, baseline = metrics(ti)["evaluations"][0], metrics(base)["evaluations"][0]
    assert first["step"] == 0 and first["protocol"] == baseline["protocol"] == "light"
    for key in ("reconstruction", "editability", "clip_i_all", "clip_t_all"):
        assert first[key] == pytest.approx(baseline[key], abs=1e-6), key
    assert "fid" not in first and "fid" in metrics(ti)["final"]  # the light protocol scores CLIP only


def test_compare_figure_pairs_same_prompt_and_seed(runs, tmp_path):
    base, ti = runs
    out = tmp_path / "compare"
    summary = figures.main(["compare", "--baseline", str(base), "--ti", str(ti), "--out", str(out),
                            "--cell", "64", "--images", "5"])
    templates = json.loads((ti / "eval" / "images" / "step000005" / "prompts.json").read_text())
    assert summary["ti_step"] == 5 and [p["template"] for p in summary["prompts"]] == templates
    width, height = figures.compare_size(2, 64, 64)  # --images 5 but the runs have 2 per prompt
    heights = []
    for p, record in enumerate(summary["prompts"]):
        assert record["images"] == 2 and record["seeds"] == [1000, 1001]
        assert record["baseline_prompt"] == templates[p].format("toy")
        assert record["ti_prompt"] == templates[p].format("<demo-toy>")
        with Image.open(out / f"p{p:02d}.png") as im:
            assert im.size == (width, height)
            panel = im.convert("RGB")
        # the cells hold exactly baseline image k (top row) and TI image k (bottom row) of prompt p
        top = figures.PAD + figures.TITLE_LINES * figures.LINE + figures.LABEL_LINES * figures.LINE
        bottom = top + 64 + figures.PAD + figures.LABEL_LINES * figures.LINE
        for k in range(2):
            x = figures.PAD + k * (64 + figures.PAD)
            for y, folder in ((top, base / "eval/images/baseline"), (bottom, ti / "eval/images/step000005")):
                expected = figures.load_cell(folder / f"p{p:02d}-{k:03d}.png", 64)
                assert panel.crop((x, y, x + 64, y + 64)).tobytes() == expected.tobytes(), (p, k)
        heights.append(height)
    with Image.open(out / "grid.png") as im:
        assert im.size == (width, sum(heights))


def test_compare_figure_puts_one_row_per_trained_run_under_the_sd_row(runs, tmp_path):
    """--ti takes several runs (SD + TI and SD + HN side by side): one row each, labelled by the run's own row."""
    base, ti = runs
    out = tmp_path / "three"
    summary = figures.main(["compare", "--baseline", str(base), "--ti", str(ti), str(ti), "--out", str(out),
                            "--cell", "64", "--images", "2"])
    assert [r["row"] for r in summary["runs"]] == ["SD + TI", "SD + TI"]
    record = summary["prompts"][0]
    assert [r["files"] for r in record["rows"]] == [record["ti_files"]] * 2
    with Image.open(out / "p00.png") as im:
        assert im.size == figures.compare_size(2, 64, 64, rows=3)
        panel = im.convert("RGB")
    third = (figures.PAD + figures.TITLE_LINES * figures.LINE
             + 3 * figures.LABEL_LINES * figures.LINE + 2 * (64 + figures.PAD))
    expected = figures.load_cell(ti / "eval/images/step000005/p00-001.png", 64)
    x = figures.PAD + 64 + figures.PAD
    assert panel.crop((x, third, x + 64, third + 64)).tobytes() == expected.tobytes()


def test_steps_figure_rows_are_evaluated_steps(runs, tmp_path):
    base, ti = runs
    summary = figures.main(["steps", "--run", str(ti), "--out", str(tmp_path / "s"), "--cell", "48"])
    assert summary["steps"] == [0, 2, 4, 5] and summary["images"] == 1 and summary["protocol"] == "light"
    light = [e for e in metrics(ti)["evaluations"] if e["protocol"] == "light"]
    assert len(summary["rows"]) == len(light) == 4
    for row, ev in zip(summary["rows"], light):
        assert row["label"] == [f"step {ev['step']}", f"recon {ev['reconstruction']:.4f}",
                                f"edit {ev['editability']:.4f}"]
    with Image.open(tmp_path / "s" / "steps.png") as im:
        assert im.size == figures.steps_size(1, 4, 48, 48)
    # the full protocol on request: only the final step has it
    full = figures.main(["steps", "--run", str(ti), "--out", str(tmp_path / "f"), "--protocol", "full"])
    assert full["steps"] == [5] and full["images"] == 2
    # with the baseline as the first row, only the last step, and one image per row
    summary = figures.main(["steps", "--run", str(ti), "--out", str(tmp_path / "b"), "--baseline", str(base),
                            "--only-steps", "4", "--images", "1"])
    assert [r["label"][0] for r in summary["rows"]] == ["SD (toy)", "step 4"]
    with Image.open(tmp_path / "b" / "steps.png") as im:
        assert im.size == figures.steps_size(1, 2, 128, 128)


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "no_evaluations"])
def test_table_bad_input_is_one_line_exit_2(runs, tmp_path, case):
    target = tmp_path / "in"
    if case == "empty":
        target.mkdir()
    elif case in ("corrupt", "no_evaluations"):
        shutil.copytree(runs[1], target)
        text = '{"concept": "demo", "evaluations": []}' if case == "no_evaluations" else '{"concept": "de'
        (target / "eval" / "metrics.json").write_text(text)
    proc = run_script("experiments/table.py", str(target), "--out", str(tmp_path / "out"), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("argv, message", [
    (["compare", "--baseline", "{ti}", "--ti", "{base}"], "swap"),
    (["compare", "--baseline", "{base}", "--ti", "{ti}", "--step", "3"], "has images at steps [0, 2, 4, 5]"),
    (["steps", "--run", "{base}"], "baseline=true run"),
    (["steps", "--run", "{ti}", "--prompt", "9"], "--prompt 9"),
    (["steps", "--run", "{ti}", "--only-steps", "7"], "--only-steps [7]"),
    (["compare", "--baseline", "{missing}", "--ti", "{ti}"], "no such file"),
])
def test_figures_bad_input_is_one_line_exit_2(runs, tmp_path, capsys, argv, message):
    base, ti = runs
    fill = {"base": str(base), "ti": str(ti), "missing": str(tmp_path / "nope")}
    with pytest.raises(SystemExit) as exc:
        figures.main([a.format(**fill) for a in argv] + ["--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_finished_marker_matches_the_trainer():
    """One name, in textinv.runs.layout, for the trainer that writes the marker and the tables that read it."""
    import textinv.training.callbacks as writer
    from textinv.runs import layout
    from textinv.runs.results import FINISHED_MARKER as READ

    assert READ is layout.FINISHED_MARKER == "run.json"
    assert not hasattr(writer, "FINISHED_MARKER") and writer.finished_marker is layout.finished_marker
