"""Issue 10's battery, generated: config mistakes drawn by hypothesis against the validation layer (in-process,
no subprocess per example), corrupted inputs against the loaders, and a few end-to-end entry-point cases.
Every case ends in success or one UserError line (exit 2): no traceback, no file outside the run folder,
nothing earlier lost."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import compose, load_script, run_script, tiny_overrides
from textinv.utils.atomic import atomic_write_text, confined, inside
from textinv.errors import UserError
from textinv.validation import GENERATE_RULES, TRAIN_RULES, check_value, safe_name, validate

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    return compose(*tiny_overrides(tmp_path_factory.mktemp("v") / "run", Path("unused")))


# --- config values: every declared key, drawn values ---------------------------------------------
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=300),
                      st.lists(st.integers(-5, 5), max_size=3))


@FAST
@given(key=st.sampled_from(sorted(TRAIN_RULES)), value=ANY_VALUE)
def test_any_value_is_accepted_or_one_line_naming_the_key(base_cfg, key, value):
    cfg = copy.deepcopy(base_cfg)
    OmegaConf.update(cfg, key, value, force_add=True)
    try:
        validate(cfg)
    except UserError as err:
        text = str(err)
        assert "\n" not in text and text.startswith(f"{key}="), text
        return
    # accepted: then it is of a sane kind (never NaN/inf, never a bool where a number is meant)
    if isinstance(value, float):
        assert math.isfinite(value)


@FAST
@given(value=st.one_of(st.integers(max_value=0), st.floats(max_value=0.0), st.just(float("nan"))))
def test_non_positive_numbers_refused(value):
    for key in ("lr", "steps", "trainer.accumulate_grad_batches", "data.batch_size", "method.num_vectors"):
        with pytest.raises(UserError, match=f"^{key}="):
            check_value(key, value)


@FAST
@given(key=st.sampled_from(sorted(GENERATE_RULES)), value=ANY_VALUE)
def test_generate_values_checked(key, value):
    try:
        check_value(key, value, GENERATE_RULES)
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith(f"{key}=")


def test_accumulate_zero_and_too_many_vectors_refused(base_cfg):
    for key, value, fragment in [("trainer.accumulate_grad_batches", 0, "whole number >= 1"),
                                 ("method.num_vectors", 100, "77-token window"), ("lr", "fast", "positive number"),
                                 ("data.flip_p", 1.5, "probability"), ("module.optim.betas", [0.9], "two numbers")]:
        cfg = copy.deepcopy(base_cfg)
        OmegaConf.update(cfg, key, value)
        with pytest.raises(UserError, match=fragment):
            validate(cfg)


# --- file names ------------------------------------------------------------------------------------
@FAST
@given(text=st.text(max_size=400))
def test_safe_name_stays_inside(tmp_path, text):
    name = safe_name(text)
    assert name and len(name) <= 100 and "/" not in name and "\\" not in name and name not in (".", "..")
    assert inside(tmp_path, tmp_path / f"{name}.pt")


@pytest.mark.parametrize("placeholder", ["<../../evil>", "<a/b>", "<a\\b>", "<" + "x" * 300 + ">", "<a\x00b>"])
def test_placeholder_that_is_not_a_file_name_is_refused(base_cfg, placeholder):
    cfg = copy.deepcopy(base_cfg)
    OmegaConf.update(cfg, "concept.placeholder", placeholder)
    with pytest.raises(UserError, match="concept.placeholder="):
        validate(cfg)


def test_confined_writes_refuse_outside(tmp_path):
    with confined(tmp_path / "run"):
        atomic_write_text(tmp_path / "run" / "ok.txt", "ok")
        with pytest.raises(UserError, match="outside"):
            atomic_write_text(tmp_path / "run" / ".." / "evil.txt", "no")
    assert not (tmp_path / "evil.txt").exists()


# --- corrupted inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("vectors,fragment", [(torch.full((1, 32), float("nan")), "NaN/inf"),
                                              (torch.tensor([[1.0, float("inf")]]), "NaN/inf"),
                                              (torch.zeros(0, 32), "empty"), (torch.zeros(1, 32, dtype=torch.int64),
                                                                              "floating-point")])
def test_bad_embedding_tensors_refused_on_load(tmp_path, vectors, fragment):
    from safetensors.torch import save_file

    from textinv.methods.textual_inversion.formats import load_embedding

    path = tmp_path / "learned_embeds.safetensors"
    save_file({"<x>": vectors}, str(path))
    with pytest.raises(UserError, match=fragment):
        load_embedding(path)


def test_unreadable_and_foreign_checkpoints_refused(tmp_path, base_cfg):
    from hydra.utils import instantiate

    from textinv.training.resume import check_resume, run_identity

    method = instantiate(base_cfg.method)(word="<demo-toy>", initializer=base_cfg.init)
    ident = run_identity(base_cfg, "<demo-toy>", "tiny", None, {"method": method.name, **method.identity()})
    for content in (b"", b"garbage", b"PK\x03\x04broken"):
        (tmp_path / "bad.ckpt").write_bytes(content)
        with pytest.raises(UserError, match="not a readable checkpoint"):
            check_resume(tmp_path / "bad.ckpt", ident)
    other = {"state_dict": {"v": torch.zeros(1, 32)}, "placeholder": {"token": "<other>"}, "model_name": "tiny"}
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="concept.placeholder='<other>'"):
        check_resume(tmp_path / "other.ckpt", ident)
    torch.save({**other, "placeholder": {"token": "<demo-toy>"}, "textinv_identity": {**ident, "lr": ident["lr"] * 2}},
               tmp_path / "lr.ckpt")
    with pytest.raises(UserError, match="lr="):
        check_resume(tmp_path / "lr.ckpt", ident)


def copy_images(src, dst):
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_caption_past_the_window_and_non_utf8_caption_refused(tmp_path, demo_images):
    from textinv.training.job import prepare

    data = copy_images(demo_images, tmp_path / "data")
    first = sorted(data.glob("*.png"))[0]
    first.with_suffix(".txt").write_text("word " * 80 + "{}")
    with pytest.raises(UserError, match="past the text encoder's 77-token window"):
        prepare(compose(*tiny_overrides(tmp_path / "run", data)))
    first.with_suffix(".txt").write_bytes("caf\xe9 {}".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        prepare(compose(*tiny_overrides(tmp_path / "run", data)))


def test_unsupported_files_among_images_are_named(tmp_path, demo_images, caplog):
    from textinv.data.images import list_image_files

    data = copy_images(demo_images, tmp_path / "data")
    (data / "photo.heic").write_bytes(b"\x00" * 10)
    files = list_image_files(data)
    assert len(files) == len(list(demo_images.iterdir()))
    assert "photo.heic" in caplog.text and "unsupported" in caplog.text


def test_run_folder_lock_refuses_a_second_process(tmp_path, demo_images):
    from textinv.training.job import train
    from textinv.runs.lock import folder_lock

    run = tmp_path / "run"
    with folder_lock(run):
        with pytest.raises(UserError, match="in use by another process"):
            train(compose(*tiny_overrides(run, demo_images, 2)))
    assert not (run / "checkpoints").exists()


def fake_run(folder: Path, model: str, location: str, value: float) -> Path:
    (folder / "eval").mkdir(parents=True)
    header = {"concept": "c", "kind": "object", "placeholder": "<c>", "initializer": "x", "baseline": False,
              "model": model, "model_location": location, "seed": 0, "settings": {}}
    evaluation = {"step": 5, "reconstruction": value, "editability": value, "num_images": 2, "per_prompt": []}
    (folder / "eval" / "metrics.json").write_text(json.dumps({**header, "evaluations": [evaluation]}))
    (folder / "run.json").write_text("{}")
    return folder


def test_table_keeps_two_model_folders_apart_and_refuses_malformed(tmp_path):
    table = load_script("table")
    a = fake_run(tmp_path / "runs" / "a", "sd15", "/models/one", 0.5)
    fake_run(tmp_path / "runs" / "b", "sd15", "/models/two", 0.7)
    rows = {r["label"] for r in table.aggregate(table.load_runs([tmp_path / "runs"]),
                                                key=table.model_row_key(table.load_runs([tmp_path / "runs"])))}
    assert rows == {"SD + TI [sd15 (/models/one)]", "SD + TI [sd15 (/models/two)]"}
    for bad in ([1, 2], {"evaluations": [{"no": "step"}]}, {"evaluations": "x"}, {"evaluations": [{"step": 1}],
                                                                                 "settings": 3}):
        (a / "eval" / "metrics.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match="metrics.json"):
            table.load_runs([a])


# --- end to end: the entry points, one line and exit 2, nothing outside the run folder -----------------
def assert_one_line(proc, fragment):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip() and not line.startswith("WARNING")]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], proc.stderr[-2000:]


def test_train_entry_point_refuses_traversal_placeholder(tmp_path, demo_images):
    run = tmp_path / "a" / "b" / "run"
    proc = run_script("train.py", *tiny_overrides(run, demo_images, 2), "concept.placeholder='<../../evil>'",
                      f"hydra.run.dir={run}")
    assert_one_line(proc, "concept.placeholder=")
    assert not list(tmp_path.rglob("evil*"))


def test_generate_never_overwrites_and_refuses_nan(tmp_path):
    from safetensors.torch import save_file

    out = tmp_path / "gen"
    out.mkdir()
    (out / "0000.png").write_bytes(b"earlier")
    proc = run_script("generate.py", "model=tiny", "prompt=a photo", "num_images=1", "steps=1", f"hydra.run.dir={out}")
    assert_one_line(proc, "already holds images")
    assert (out / "0000.png").read_bytes() == b"earlier"
    save_file({"<x>": torch.full((1, 32), float("nan"))}, str(tmp_path / "nan.safetensors"))
    proc = run_script("generate.py", "model=tiny", "prompt=a <x>", "num_images=1", "steps=1",
                      f"embeddings=[{tmp_path / 'nan.safetensors'}]", f"hydra.run.dir={tmp_path / 'gen2'}")
    assert_one_line(proc, "NaN/inf")


def test_table_out_that_is_a_file(tmp_path):
    fake_run(tmp_path / "runs" / "a", "tiny", "", 0.5)
    (tmp_path / "out").write_text("a file")
    proc = run_script("experiments/table.py", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--no-wandb")
    assert_one_line(proc, "is an existing file")
    assert (tmp_path / "out").read_text() == "a file"
