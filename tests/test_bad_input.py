"""Every user mistake: one line naming the problem and the fix, exit 2, before the big model loads,
and nothing an earlier run wrote is touched."""

import hashlib

import pytest

from conftest import compose, run_script, tiny_overrides
from textinv.errors import UserError
from textinv.training.job import prepare, train


def write_images(folder, demo_images):
    folder.mkdir(parents=True, exist_ok=True)
    for p in demo_images.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def broken_folder(tmp_path, _):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (folder / "b.png").write_bytes(b"")
    return folder


CASES = {
    "missing data folder": (lambda t, d: t / "nope", [], "does not exist"),
    "empty data folder": (lambda t, d: (t / "empty").mkdir() or t / "empty", [], "has no images"),
    "no readable image": (broken_folder, [], "no readable image"),
    "placeholder in vocabulary": (lambda t, d: d, ["concept.placeholder=cat"], "already a token"),
    "placeholder with a space": (lambda t, d: d, ["concept.placeholder='<my toy>'"], "whitespace"),
    "empty initializer": (lambda t, d: d, ["init=''"], "initializer word is empty"),
    "missing initializer": (lambda t, d: d, ["init=null"], "initializer word is empty"),
    "zero lr": (lambda t, d: d, ["lr=0"], "lr=0 must be a positive number"),
    "negative steps": (lambda t, d: d, ["steps=-5"], "steps=-5 must be a positive number"),
    "bad resolution": (lambda t, d: d, ["data.resolution=30"], "multiple of 4; try data.resolution=32"),
    "missing model folder": (lambda t, d: d, ["model=sd15", "model.path=/nonexistent/sd"], "not a diffusers model folder"),
    "no cached hub weights": (lambda t, d: d, ["model=sd15"], "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "missing ckpt": (lambda t, d: d, ["ckpt_path=/nonexistent.ckpt"], "does not exist"),
    "sample prediction": (lambda t, d: d, ["model.prediction_type=sample"], "model tiny predicts 'sample'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_user_error(case, tmp_path, demo_images, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))  # nothing cached
    folder_of, overrides, message = CASES[case]
    cfg = compose(*tiny_overrides(tmp_path / "run", folder_of(tmp_path, demo_images)), *overrides)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        prepare(cfg)


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_images):
    run_dir = tmp_path_factory.mktemp("done") / "run"
    train(compose(*tiny_overrides(run_dir, demo_images, steps=2)))
    return run_dir


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0]


def test_finished_run_is_never_overwritten(finished_run, demo_images):
    before = digest(finished_run)
    proc = run_script("train.py", "experiment=tiny", f"concept.data_dir={demo_images}", "logger=csv",
                      f"hydra.run.dir={finished_run}")
    assert_one_line_error(proc, "already holds a finished run", "hydra.run.dir")
    after = digest(finished_run)  # Hydra may add an (appended) train.log; nothing earlier changes
    assert {k: after.get(k) for k in before} == before


def test_cli_missing_data_and_missing_weights(tmp_path, demo_images):
    proc = run_script("train.py", "experiment=tiny", f"concept.data_dir={tmp_path / 'none'}",
                      f"hydra.run.dir={tmp_path / 'a'}")
    assert_one_line_error(proc, "does not exist", "concept.data_dir")
    proc = run_script("train.py", "concept=deku_tree", f"concept.data_dir={demo_images}", "model.path=/no/such",
                      f"hydra.run.dir={tmp_path / 'b'}")
    assert_one_line_error(proc, "model.path=/no/such", "model=tiny")


def test_unknown_concept_lists_the_known_ones(tmp_path):
    proc = run_script("train.py", "concept=deku_treee", f"hydra.run.dir={tmp_path / 'c'}")
    assert proc.returncode != 0
    assert "deku_treee" in proc.stderr and "deku_tree" in proc.stderr and "puc_innovation_center" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "c").exists()
