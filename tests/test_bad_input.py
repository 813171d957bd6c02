"""Every user mistake: one line naming the problem and the fix, exit 2, before the big model loads,
and nothing an earlier run wrote is touched."""

import hashlib

import pytest
import torch

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


# --- issue 21: every command as careful as train.py ------------------------------------------------------------
import json  # noqa: E402
import shutil  # noqa: E402

from textinv.training.resume import check_resume, model_identity, run_identity  # noqa: E402


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, demo_images):
    """A run with a checkpoint and no run.json (as an interrupted one is), trained on a copy of the demo images."""
    root = tmp_path_factory.mktemp("stopped")
    data = copy_folder(demo_images, root / "data")
    run_dir = root / "run"
    train(compose(*tiny_overrides(run_dir, data, steps=2)))
    (run_dir / "run.json").unlink()
    return run_dir, data


def _replace_first(folder):
    first = sorted(p for p in folder.iterdir() if p.suffix == ".png")[0]
    from PIL import Image

    Image.new("RGB", (64, 64), (1, 2, 3)).save(first)


RESUME_CHANGES = {  # what changed since the checkpoint -> what the one line must name
    "image added": (lambda f: shutil.copy(sorted(f.glob("*.png"))[0], f / "zz-new.png"), [], "added zz-new.png"),
    "image removed": (lambda f: sorted(f.glob("*.png"))[0].unlink(), [], "removed"),
    "image replaced": (_replace_first, [], "replaced"),
    "caption added": (lambda f: (f / (sorted(f.glob("*.png"))[0].stem + ".txt")).write_text("on a table"), [],
                      "added"),
    "resolution": (lambda f: None, ["data.resolution=64"], "data.resolution=32"),
    "flip": (lambda f: None, ["data.flip_p=0.0"], "data.flip_p="),
    "betas": (lambda f: None, ["module.optim.betas=[0.8,0.9]"], "module.optim.betas="),
}


@pytest.mark.parametrize("case", list(RESUME_CHANGES))
def test_resume_refuses_changed_data_and_settings(case, stopped_run, tmp_path):
    run_dir, data = stopped_run
    change, overrides, fragment = RESUME_CHANGES[case]
    folder = copy_folder(data, tmp_path / "data")
    change(folder)
    before = digest(run_dir)
    with pytest.raises(UserError, match=fragment) as info:
        prepare(compose(*tiny_overrides(run_dir, folder, 2), *overrides))
    assert "\n" not in str(info.value) and "hydra.run.dir" in str(info.value)
    assert digest(run_dir) == before


def test_resume_with_the_same_data_elsewhere_is_accepted(stopped_run, tmp_path, caplog):
    """Harmless by design (the same images in another folder, evaluation settings): applied and logged."""
    run_dir, data = stopped_run
    moved = copy_folder(data, tmp_path / "moved")
    _, ckpt, *_ = prepare(compose(*tiny_overrides(run_dir, moved, 2), "eval.num_images=3"))
    assert ckpt and ckpt.endswith("last.ckpt")
    assert f"resuming with concept.data_dir='{moved}'" in caplog.text and "eval.num_images=3" in caplog.text


def test_model_weights_changed_at_the_same_path_are_named(tmp_path):
    """The weights' fingerprint (the baseline cache's) is part of the identity: a folder rewritten in place differs."""
    import os

    from textinv.models.frozen_sd import ModelSource

    folder = tmp_path / "sd"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"a" * 100)
    source = ModelSource(path=str(folder), name="mine")
    first = model_identity(source.fingerprint())
    weights.write_bytes(b"b" * 120)
    os.utime(weights, ns=(1, 1))
    assert model_identity(source.fingerprint()) != first
    cfg = compose(*tiny_overrides(tmp_path / "r", tmp_path))
    saved = run_identity(cfg, "<demo-toy>", "mine", str(folder), {"method": "textual_inversion"},
                         model_fingerprint=first)
    torch.save({"state_dict": {"step": torch.zeros(1)}, "textinv_identity": saved}, tmp_path / "a.ckpt")
    now = {**saved, "model_fingerprint": model_identity(source.fingerprint())}
    with pytest.raises(UserError, match=f"other model weights: the files at {folder} changed"):
        check_resume(tmp_path / "a.ckpt", now)
    check_resume(tmp_path / "a.ckpt", saved)  # unchanged: accepted


def test_folder_of_only_hidden_files_names_them(tmp_path, demo_images):
    folder = tmp_path / "hidden"
    folder.mkdir()
    for p in sorted(demo_images.glob("*.png"))[:2]:
        shutil.copy(p, folder / f"._{p.name}")
    with pytest.raises(UserError, match=r"holds only hidden files \(\._.*\.png.*rename"):
        prepare(compose(*tiny_overrides(tmp_path / "run", folder)))


def test_oversized_inputs_are_refused_before_reading(tmp_path, demo_images):
    """A stat decides: a sparse 1.2 GB file costs no disk and would take minutes and GBs to read."""
    from textinv.methods.textual_inversion.formats import read_embedding
    from textinv.training.resume import read_checkpoint

    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.truncate(1_200_000_000)
    with pytest.raises(UserError, match="more than any embedding file"):
        read_embedding(big)
    huge_ckpt = tmp_path / "huge.ckpt"
    with open(huge_ckpt, "wb") as f:
        f.truncate(9 << 30)
    with pytest.raises(UserError, match="more than any checkpoint file"):
        read_checkpoint(huge_ckpt)
    folder = copy_folder(demo_images, tmp_path / "imgs")
    with open(folder / "video.png", "wb") as f:
        f.truncate(300 << 20)
    from textinv.data.images import load_concept_images

    _, used = load_concept_images(folder, 32)
    assert "video.png" not in [p.name for p in used]
    caption = folder / (sorted(folder.glob("*.png"))[0].stem + ".txt")
    with open(caption, "wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(UserError, match="more than any caption file"):
        prepare(compose(*tiny_overrides(tmp_path / "run", folder)))


def test_hub_that_does_not_answer_is_one_line_within_seconds(tmp_path, demo_images, monkeypatch):
    """A stalled network: a socket that accepts and never answers. The probe's bound, not 78-120 s of retries."""
    import socket
    import time

    from textinv.utils import offline

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    monkeypatch.setattr(offline, "PROBE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(offline, "_reachable", {})
    start = time.monotonic()
    try:
        with pytest.raises(UserError, match=r"not in the local Hugging Face cache .* does not answer.*model\.path=.*"
                                            r"HF_HUB_OFFLINE=1") as info:
            prepare(compose(*tiny_overrides(tmp_path / "run", demo_images), "model=sd15"))
    finally:
        server.close()
    assert time.monotonic() - start < 20 and "\n" not in str(info.value)


def fake_run(folder, concept="c", baseline=False, value=0.5, model="tiny", location="", weights=None, **evaluation):
    (folder / "eval").mkdir(parents=True)
    header = {"concept": concept, "kind": "object", "placeholder": f"<{concept}>", "initializer": "x",
              "baseline": baseline, "model": model, "model_location": location, "seed": 0, "settings": {}}
    if weights:
        header["model_fingerprint"] = weights
    record = {"step": 0 if baseline else 5, "protocol": "full", "reconstruction": value, "editability": value,
              "num_images": 2, "per_prompt": [], **evaluation}
    (folder / "eval" / "metrics.json").write_text(json.dumps({**header, "evaluations": [record]}))
    (folder / "run.json").write_text("{}")
    return folder


def table_of(tmp_path, capsys=None):
    from conftest import load_script

    table = load_script("table")
    runs = table.load_runs([tmp_path / "runs"])
    return runs, {r["label"]: r for r in table.aggregate(runs, key=table.model_row_key(runs))}, \
        table.comparability_warnings(runs)


def test_reader_never_puts_two_concepts_side_by_side(tmp_path):
    fake_run(tmp_path / "runs" / "sd_a", "a", baseline=True)
    fake_run(tmp_path / "runs" / "ti_b", "b")
    with pytest.raises(UserError, match=r"SD row's runs are of concept\(s\) a and the trained runs of b"):
        table_of(tmp_path)
    fake_run(tmp_path / "runs" / "ti_a", "a", value=0.7)
    runs, rows, notes = table_of(tmp_path)
    assert sorted(r.concept for r in runs) == ["a", "a"]
    assert any("left out 1 run(s)" in n and "ti_b" in n for n in notes)


def test_reader_says_what_it_leaves_out_and_reads_numeric_strings(tmp_path):
    fake_run(tmp_path / "runs" / "one", value=0.5)
    fake_run(tmp_path / "runs" / "nan", value=float("nan"))
    fake_run(tmp_path / "runs" / "text", value="0.7")
    runs, rows, notes = table_of(tmp_path)
    stat = rows["SD + TI"]["stats"]["reconstruction"]
    assert stat.n == 2 and stat.mean == pytest.approx(0.6)
    assert any("Reconstruction: left out of the mean for 1 run(s)" in n and "nan" in n for n in notes)


def test_reader_keeps_weights_retrained_in_place_apart(tmp_path):
    fake_run(tmp_path / "runs" / "sd", "a", baseline=True, location="/m", weights="1111aaaa")
    fake_run(tmp_path / "runs" / "ti", "a", location="/m", weights="2222bbbb")
    runs, rows, notes = table_of(tmp_path)
    assert set(rows) == {"SD [tiny (/m) weights 1111aaaa]", "SD + TI [tiny (/m) weights 2222bbbb]"}
    assert any("different models" in n for n in notes)


def test_figures_refuse_runs_of_two_concepts_or_two_models(tmp_path, capsys):
    from conftest import load_script

    figures = load_script("figures")
    base = fake_run(tmp_path / "sd", "a", baseline=True)
    other = fake_run(tmp_path / "ti", "b")
    with pytest.raises(SystemExit) as code:
        figures.main(["compare", "--baseline", str(base), "--ti", str(other), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and err.count("\n") == 0 and "same concept" in err
    moved = fake_run(tmp_path / "ti2", "a", location="/elsewhere")
    with pytest.raises(SystemExit):
        figures.main(["compare", "--baseline", str(base), "--ti", str(moved), "--out", str(tmp_path / "o")])
    assert "same model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_draw_never_writes_among_the_users_photos(tmp_path, capsys):
    from textinv.toyworld.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "00.png").write_bytes(b"my own photo")
    (tmp_path / "a_file").write_text("mine")
    for out in (photos, tmp_path / "a_file"):
        with pytest.raises(SystemExit) as code:
            main(["draw", "--shape", "star", "--n", "2", "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert code.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --out")
    assert (photos / "00.png").read_bytes() == b"my own photo" and (tmp_path / "a_file").read_text() == "mine"
    fresh = tmp_path / "drawn"
    assert main(["draw", "--n", "2", "--px", "16", "--out", str(fresh)]) == 0
    assert main(["draw", "--n", "1", "--px", "16", "--out", str(fresh)]) == 0  # its own folder: redrawn
    assert sorted(p.name for p in fresh.iterdir()) == [".drawn.json", "00.png"]


def test_generate_takes_a_run_folder(stopped_run, tmp_path):
    from omegaconf import OmegaConf

    from textinv.methods.textual_inversion.loading import EmbeddingFiles
    from textinv.models.frozen_sd import ModelSource

    run_dir, _ = stopped_run
    source = ModelSource("tiny")
    files = EmbeddingFiles.read(OmegaConf.create({"embeddings": [str(run_dir)], "tokens": None}), source,
                                source.load_tokenizer())
    assert files.words == ["<demo-toy>"] and files.loaded[0].path == run_dir / "demo-toy.pt"
    bare = tmp_path / "unfinished"
    bare.mkdir()
    (bare / "config.yaml").write_text("{}")
    with pytest.raises(UserError, match="is a run folder .* without its final file yet"):
        EmbeddingFiles.read(OmegaConf.create({"embeddings": [str(bare)], "tokens": None}), source,
                            source.load_tokenizer())


def test_plan_refuses_what_training_refuses(tmp_path, demo_images, capsys):
    from textinv.training.job import print_plan

    for overrides, fragment in ((["data.resolution=30"], "multiple of 4"), (["concept.placeholder=cat"], "already a token"),
                                (["baseline=true", "eval.enabled=false"], "baseline=true only evaluates")):
        with pytest.raises(UserError, match=fragment):
            print_plan(compose(*tiny_overrides(tmp_path / "run", demo_images), *overrides))
    assert capsys.readouterr().out == ""  # no plan printed for a run training would refuse
    plan = print_plan(compose(*tiny_overrides(tmp_path / "run", tmp_path / "not_here")))  # another machine's data
    assert plan["train_micro_steps"] > 0 and not (tmp_path / "not_here").exists()


def test_convert_never_overwrites(tmp_path, capsys):
    from safetensors.torch import save_file

    from textinv.methods.convert import main

    save_file({"<x>": torch.ones(1, 768)}, str(tmp_path / "in.safetensors"))
    (tmp_path / "taken.pt").write_bytes(b"someone else's")
    for out, fragment in ((tmp_path / "taken.pt", "already exists"), (tmp_path / "taken.pt" / "x.pt", "is a file")):
        with pytest.raises(SystemExit) as code:
            main([str(tmp_path / "in.safetensors"), str(out)])
        err = capsys.readouterr().err.strip()
        assert code.value.code == 2 and len(err.splitlines()) == 1 and fragment in err
    assert (tmp_path / "taken.pt").read_bytes() == b"someone else's"


def test_table_never_overwrites_a_file_it_did_not_write(tmp_path, capsys):
    from conftest import load_script

    table = load_script("table")
    fake_run(tmp_path / "runs" / "a", "a")
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.md").write_text("my notes")
    with pytest.raises(SystemExit) as code:
        table.main([str(tmp_path / "runs"), "--out", str(out), "--no-wandb"])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and err.count("\n") == 0 and "not written by textinv" in err
    assert (out / "table.md").read_text() == "my notes"
    again = tmp_path / "fresh"
    table.main([str(tmp_path / "runs"), "--out", str(again), "--no-wandb"])
    table.main([str(tmp_path / "runs"), "--out", str(again), "--no-wandb"])  # its own files: rewritten
    assert (again / "table.md").is_file()


def test_hydra_composition_mistakes_are_one_line_exit_2(tmp_path):
    """A misspelled key, an unknown choice, an override that does not parse: Hydra's several lines and exit 1 become
    one line and exit 2, before anything is written."""
    for args, fragment in ((["lerning_rate=1e-3"], "lerning_rate: no such key"),
                           (["concept=deku_treee"], "concept=deku_treee: no such concept config; available: "),
                           (["lr=["], "does not parse")):
        proc = run_script("train.py", "experiment=tiny", *args, f"hydra.run.dir={tmp_path / 'x'}")
        assert_one_line_error(proc, fragment)
    proc = run_script("generate.py", "model=tiny", "prompt=a photo", "stepz=3", f"hydra.run.dir={tmp_path / 'g'}")
    assert_one_line_error(proc, "stepz: no such key")
    assert not (tmp_path / "x").exists() and not (tmp_path / "g").exists()
