"""Interruption, determinism, numerical faults, atomic writes, and the bad-input battery."""

import errno
import os
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose, embedding, run_script, start_script, tiny_overrides
from textinv.utils.atomic import atomic_write
from textinv.cli import exit_on_user_error
from textinv.data.datamodule import Concept, ConceptDataModule
from textinv.errors import NumericalFault, UserError
from textinv.data.images import load_concept_images
from textinv.training.job import prepare, train


def test_sigterm_saves_a_resumable_checkpoint(tmp_path, demo_images, reference_run):
    run_dir = tmp_path / "term"
    args = [o for o in tiny_overrides(run_dir, demo_images) if not o.startswith("callbacks.model_checkpoint")]
    args += [f"hydra.run.dir={run_dir}", "callbacks.model_checkpoint.every_n_train_steps=100"]  # only the signal saves
    proc = start_script("train.py", *args)
    deadline = time.time() + 120
    while not (run_dir / "snapshots/diffusers/learned_embeds-step000002.safetensors").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "re-run the same command to resume" in err and "Traceback" not in err
    assert (run_dir / "checkpoints/last.ckpt").is_file() and not (run_dir / "run.json").exists()
    again = run_script("train.py", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert torch.equal(embedding(run_dir), embedding(reference_run))


def test_same_seed_same_embedding_other_seed_differs(tmp_path, demo_images, reference_run):
    train(compose(*tiny_overrides(tmp_path / "s0", demo_images)))
    train(compose(*tiny_overrides(tmp_path / "s1", demo_images), "seed=1"))
    assert torch.equal(embedding(tmp_path / "s0"), embedding(reference_run))
    assert not torch.equal(embedding(tmp_path / "s1"), embedding(reference_run))


def test_divergence_stops_with_last_good_embedding(tmp_path, demo_images):
    run_dir = tmp_path / "nan"
    with pytest.raises(NumericalFault, match=r"diverged at step \d+.*demo-toy-last-good.pt; lower lr=.*precision=32"):
        train(compose(*tiny_overrides(run_dir, demo_images, 20), "lr=1e30"))
    from safetensors.torch import load_file

    last_good = load_file(str(run_dir / "diffusers/learned_embeds-last-good.safetensors"))["<demo-toy>"]
    assert (run_dir / "demo-toy-last-good.pt").is_file()
    assert torch.isfinite(last_good).all()
    assert not (run_dir / "run.json").exists()


def test_atomic_write_never_truncates(tmp_path):
    target = tmp_path / "learned_embeds.safetensors"
    target.write_bytes(b"earlier complete file")

    def crash(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"earlier complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["learned_embeds.safetensors"]


def test_atomic_write_gives_the_umask_mode(tmp_path):
    """mkstemp's 0600 would hide the embedding from a web UI running as another user."""
    mask = os.umask(0o022)
    os.umask(mask)
    path = atomic_write(tmp_path / "a.pt", lambda p: p.write_bytes(b"x"))
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_full_disk_is_one_line(capsys):
    @exit_on_user_error
    def job():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/last.ckpt")

    with pytest.raises(SystemExit) as exit_info:
        job()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "last.ckpt" in err and "No space left" in err


# --- the bad-input battery: files a user may drop into a concept folder -----------------------

def make_battery(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    good.save(folder / "good.jpg")
    (folder / "zero.jpg").write_bytes(b"")
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.png").write_text("this is not an image")
    good.save(folder / "really_png.jpg", format="PNG")  # mislabelled: decoded by content
    Image.new("RGB", (4, 4), (0, 0, 255)).save(folder / "tiny.png")
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    Image.fromarray(np.full((32, 32), 30000, np.uint16)).save(folder / "deep16.png")
    Image.new("CMYK", (32, 32), (0, 0, 0, 0)).save(folder / "cmyk.jpg")
    os.symlink("loop.jpg", folder / "loop.jpg")  # a link to itself
    os.symlink(".", folder / "sub")  # a directory loop
    return folder


def test_battery_skips_broken_converts_the_rest(tmp_path, caplog):
    folder = make_battery(tmp_path / "cóncept photos ü")
    images, files = load_concept_images(folder, 32)
    names = sorted(f.name for f in files)
    assert names == ["anim.gif", "cmyk.jpg", "deep16.png", "good.jpg", "really_png.jpg", "tiny.png"]
    assert all(i.mode == "RGB" and min(i.size) >= 4 for i in images)
    for skipped in ("zero.jpg", "notes.png"):
        assert skipped in caplog.text
    anim = np.asarray(images[names.index("anim.gif")])
    assert anim[..., 0].mean() > 200 and anim[..., 1].mean() < 50  # the first frame
    dm = ConceptDataModule(Concept("t", "<t-x>", "toy", data_dir=str(folder)), resolution=32)
    assert dm.pixel_tensor().shape == (6, 3, 32, 32)  # tiny images are upscaled, not rejected


def test_truncated_jpeg_is_skipped_or_decoded(tmp_path):
    folder = make_battery(tmp_path / "b")
    for name in ("truncated.jpg",):
        assert name not in [f.name for f in load_concept_images(folder, 32)[1]]


def test_huge_image_loads_small(tmp_path):
    folder = tmp_path / "huge"
    folder.mkdir()
    Image.new("RGB", (8000, 6000), (120, 30, 200)).save(folder / "huge.jpg", quality=70)
    images, _ = load_concept_images(folder, 64)
    assert min(images[0].size) == 64


def test_unicode_path_end_to_end(tmp_path, demo_images):
    folder = tmp_path / "データ my concept"
    folder.mkdir()
    for p in demo_images.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    run_dir = tmp_path / "rün dir"
    train(compose(*tiny_overrides(run_dir, folder, 2)))
    assert (run_dir / "run.json").is_file()


def test_conflicting_overrides_fail_cleanly(tmp_path):
    proc = run_script("train.py", "experiment=tiny", "lr=1e-3", "lr=2e-3", f"hydra.run.dir={tmp_path / 'x'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: conflicting overrides 'lr=1e-3' and 'lr=2e-3'; give lr once "
                                   "(for a sweep: -m lr=a,b)")
    assert not (tmp_path / "x").exists()


def test_unusable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_script("train.py", "experiment=tiny", f"hydra.run.dir={blocker}/run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: hydra.run.dir={blocker}/run: {blocker} is not a directory; "
                                                "choose a writable folder"]
    assert blocker.read_text() == "not a folder"


def test_placeholder_with_spaces_is_rejected_before_loading(tmp_path, demo_images):
    with pytest.raises(UserError, match="whitespace"):
        prepare(compose(*tiny_overrides(tmp_path / "r", demo_images), "concept.placeholder='<my toy>'"))


# --- issue 21: messages that agree with what happened ------------------------------------------------------------
EVAL_ON = ["eval.enabled=true", "eval.every_n_steps=0", "eval.at_steps=[]", "eval.num_images=1",
           "eval.sampler_steps=2", "eval.light.num_images=1", "eval.light.sampler_steps=1", "eval.fid.enabled=false",
           "callbacks.validation_loss.enabled=false"]


def signal_during(monkeypatch, signum, when):
    """Send `signum` to this process when an evaluation record of `when(protocol)` starts."""
    from textinv.evaluation.recorder import EvaluationRecorder

    real = EvaluationRecorder.record

    def record(self, loggers, generator, step, protocol, *args, **kwargs):
        if when(protocol):
            os.kill(os.getpid(), signum)
        return real(self, loggers, generator, step, protocol, *args, **kwargs)

    monkeypatch.setattr(EvaluationRecorder, "record", record)


def test_ctrl_c_during_the_final_evaluation_says_so_and_the_rerun_finishes(tmp_path, demo_images, monkeypatch):
    from conftest import SMALL_CLIP
    from textinv.errors import Interrupted
    from textinv.runs.layout import metrics_file

    run_dir = tmp_path / "final"
    args = [o for o in tiny_overrides(run_dir, demo_images, 3) if o != "eval=off"] + [*SMALL_CLIP, *EVAL_ON]
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with monkeypatch.context() as m:
            signal_during(m, signal.SIGINT, lambda protocol: protocol.name == "full")
            with pytest.raises(Interrupted, match="SIGINT during the final evaluation at step 3.*files are written"
                                                  ".*re-run the same command to run only the final evaluation") as info:
                train(compose(*args))
        assert info.value.exit_code == 130 and "\n" not in str(info.value)
        assert (run_dir / "demo-toy.pt").is_file() and not (run_dir / "run.json").exists()
        ckpt = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == 3  # saved before the evaluation: the re-run trains nothing
        train(compose(*args))  # the same command again
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert (run_dir / "run.json").is_file()
    records = __import__("json").loads(metrics_file(run_dir).read_text())["evaluations"]
    assert [(r["step"], r["protocol"]) for r in records if r["protocol"] == "full"][-1] == (3, "full")


def test_sigterm_during_a_baseline_run_ends_with_a_message(tmp_path, demo_images, monkeypatch):
    from conftest import SMALL_CLIP
    from textinv.errors import Interrupted

    run_dir = tmp_path / "base"
    args = [o for o in tiny_overrides(run_dir, demo_images, 2) if o != "eval=off"] + [
        *SMALL_CLIP, *EVAL_ON, "baseline=true", f"eval.baseline_cache='{tmp_path / 'cache'}'"]
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal_during(monkeypatch, signal.SIGTERM, lambda protocol: True)
        with pytest.raises(Interrupted, match="SIGTERM during the baseline evaluation.*not marked finished") as info:
            train(compose(*args))
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert info.value.exit_code == 143 and not (run_dir / "run.json").exists()
    assert all(signal.getsignal(s) == h for s, h in previous.items())  # handlers put back


# --- issue 21: a property over every entry point ------------------------------------------------------------------
# Drawn arguments and corrupted inputs for each command (in-process: its main(argv), or train.py's checks), asserting
# what every command promises: exit 0 or 2; on 2 one `error:` line and no traceback; no file written outside the
# command's output folder; nothing that was there before changed.
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ENTRY = settings(max_examples=20, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _fingerprint(p: Path) -> str:
    if not p.is_file():
        return "dir"
    st_ = p.stat()
    if st_.st_size > 16 << 20:  # the sparse "huge" inputs: size and date (hashing them would read GBs of zeros)
        return f"{st_.st_size}:{st_.st_mtime_ns}"
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): _fingerprint(p) for p in sorted(root.rglob("*")) if not p.is_symlink()}


def call(main, argv) -> tuple[int, str]:
    """A command in-process: its exit code and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            result = main(argv)
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 2
        except UserError as user:  # train.py's checks called directly: what exit_on_user_error prints
            print(f"error: {user}", file=err)
            code = 2
    return code, err.getvalue()


def assert_contract(code, err, root: Path, before: dict, out: Path | None):
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, err
    after = tree(root)
    for name, digest_ in before.items():  # nothing earlier changed or vanished
        assert after.get(name) == digest_, (name, err)
    new = [n for n in after if n not in before]
    inside = [n for n in new if out is not None and ((root / n).resolve().is_relative_to(out.resolve())
                                                     or out.resolve().is_relative_to((root / n).resolve()))]
    assert sorted(set(new) - set(inside)) == [], (new, out, err)


def scratch(tmp_path: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=tmp_path))


def fake_result(folder: Path, concept="c", baseline=False, value=0.5, step=5, location="") -> Path:
    from PIL import Image as PILImage

    images = folder / "eval" / "images" / ("baseline" if baseline else f"step{step:06d}")
    images.mkdir(parents=True)
    (images / "prompts.json").write_text(json.dumps(["a photo of {}"]))
    PILImage.new("RGB", (8, 8), (200, 10, 10)).save(images / "p00-000.png")
    header = {"concept": concept, "kind": "object", "placeholder": "<c>", "initializer": "x", "baseline": baseline,
              "model": "tiny", "model_location": location, "seed": 0, "settings": {"seed": 0}}
    record = {"step": 0 if baseline else step, "protocol": "full", "reconstruction": value, "editability": value,
              "num_images": 1, "per_prompt": []}
    (folder / "eval" / "metrics.json").write_text(json.dumps({**header, "evaluations": [record]}))
    (folder / "run.json").write_text("{}")
    return folder


OUTS = st.sampled_from(["new", "file", "photos", "missing_parent"])


def make_out(root: Path, kind: str) -> Path:
    out = root / "out"
    if kind == "file":
        out.write_text("a user's file")
    elif kind == "photos":
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"a user's photo")
    elif kind == "missing_parent":
        out = root / "no" / "such" / "out"
    return out


@ENTRY
@given(out=OUTS, n=st.sampled_from(["2", "0", "-1", "x", "10001"]), px=st.sampled_from(["16", "8", "5000", "1e3"]),
       shape=st.sampled_from([[], ["--shape", "star"], ["--shape", "stars"], ["--color", "red,blue"]]))
def test_toyworld_draw_keeps_the_contract(tmp_path, out, n, px, shape):
    from textinv.toyworld.cli import main

    root = scratch(tmp_path)
    target = make_out(root, out)
    before = tree(root)
    code, err = call(main, ["draw", "--n", n, "--px", px, *shape, "--out", str(target)])
    assert_contract(code, err, root, before, target if out in ("new", "missing_parent") else None)


@ENTRY
@given(src=st.sampled_from(["a1111", "kohya", "garbage", "empty", "huge", "missing", "folder", "pickle"]),
       out=st.sampled_from(["x.pt", "x.safetensors", "dir", "existing.pt", "no/dir/x.pt", "x.txt"]),
       to=st.sampled_from([[], ["--to", "kohya"], ["--to", "nope"], ["--token", "<t>"]]))
def test_convert_keeps_the_contract(tmp_path, src, out, to):
    import pickle

    from safetensors.torch import save_file

    from textinv.methods.convert import main
    from textinv.methods.textual_inversion.formats import save_a1111

    root = scratch(tmp_path)
    inputs = root / "in"
    inputs.mkdir()
    path = inputs / f"e.{'safetensors' if src == 'kohya' else 'pt'}"
    if src == "a1111":
        save_a1111(path, "<e>", torch.ones(1, 768))
    elif src == "kohya":
        save_file({"emb_params": torch.ones(2, 768)}, str(path))
    elif src == "garbage":
        path.write_bytes(b"\x80garbage")
    elif src == "empty":
        path.write_bytes(b"")
    elif src == "huge":
        with open(path, "wb") as f:
            f.truncate(200 << 20)
    elif src == "folder":
        path = inputs
    elif src == "pickle":
        path.write_bytes(pickle.dumps({"x": print}))
    (root / "existing.pt").write_bytes(b"a user's file")
    before = tree(root)
    target = root / out
    fresh = not target.exists()
    code, err = call(main, [str(path), str(target), *to])
    assert_contract(code, err, root, before, target if fresh else None)


@ENTRY
@given(runs=st.lists(st.sampled_from(["ti_a", "sd_a", "ti_b", "nan", "text", "broken", "empty_dir", "missing"]),
                     min_size=1, max_size=4, unique=True), out=OUTS)
def test_table_keeps_the_contract(tmp_path, runs, out):
    from conftest import load_script

    table = load_script("table")
    root = scratch(tmp_path)
    made = {"ti_a": lambda f: fake_result(f, "a"), "sd_a": lambda f: fake_result(f, "a", baseline=True),
            "ti_b": lambda f: fake_result(f, "b"), "nan": lambda f: fake_result(f, "a", value=float("nan")),
            "text": lambda f: fake_result(f, "a", value="0.7"),
            "broken": lambda f: fake_result(f, "a") and (f / "eval" / "metrics.json").write_text('{"conc'),
            "empty_dir": lambda f: f.mkdir(parents=True), "missing": lambda f: None}
    paths = []
    for name in runs:
        made[name](root / "runs" / name)
        paths.append(str(root / "runs" / name))
    target = make_out(root, out)
    before = tree(root)
    code, err = call(table.main, [*paths, "--out", str(target), "--no-wandb"])
    assert_contract(code, err, root, before, None if out == "file" else target)


@ENTRY
@given(pair=st.sampled_from([("sd_a", "ti_a"), ("ti_a", "sd_a"), ("sd_a", "ti_b"), ("sd_a", "ti_moved"),
                             ("sd_a", "missing"), ("sd_a", "sd_a")]), out=OUTS,
       extra=st.sampled_from([[], ["--images", "0"], ["--step", "x"], ["--step", "7"], ["--cell", "-3"]]))
def test_figures_keep_the_contract(tmp_path, pair, out, extra):
    from conftest import load_script

    figures = load_script("figures")
    root = scratch(tmp_path)
    made = {"sd_a": dict(concept="a", baseline=True), "ti_a": dict(concept="a"), "ti_b": dict(concept="b"),
            "ti_moved": dict(concept="a", location="/elsewhere")}
    for name in set(pair) & set(made):
        fake_result(root / name, **made[name])
    target = make_out(root, out)
    before = tree(root)
    code, err = call(figures.main, ["compare", "--baseline", str(root / pair[0]), "--ti", str(root / pair[1]),
                                    "--out", str(target), *extra])
    assert_contract(code, err, root, before, None if out == "file" else target)


TRAIN_MISTAKES = ["data.resolution=30", "steps=0", "lr=fast", "concept.placeholder=cat", "init=''",
                  "ckpt_path=/no/such.ckpt", "data.flip_p=2", "method.num_vectors=0", "model.prediction_type=sample",
                  "baseline=true", "eval.enabled=true", "seed=-1", "data.batch_size=1"]
DATA = st.sampled_from(["good", "empty", "hidden", "truncated", "caption_latin1", "caption_huge", "missing", "file"])


def make_data(root: Path, kind: str, demo_images: Path) -> Path:
    folder = root / "data"
    if kind == "missing":
        return folder
    if kind == "file":
        folder.write_text("not a folder")
        return folder
    folder.mkdir()
    pngs = sorted(demo_images.glob("*.png"))
    for p in pngs:
        if kind in ("good", "caption_latin1", "caption_huge"):
            shutil.copy(p, folder / p.name)
        elif kind == "hidden":
            shutil.copy(p, folder / f".{p.name}")
        elif kind == "truncated":
            (folder / p.name).write_bytes(p.read_bytes()[:40])
    if kind == "caption_latin1":
        (folder / f"{pngs[0].stem}.txt").write_bytes("caf\xe9".encode("latin-1"))
    if kind == "caption_huge":
        with open(folder / f"{pngs[0].stem}.txt", "wb") as f:
            f.truncate(3 << 20)
    return folder


@ENTRY
@given(data=DATA, overrides=st.lists(st.sampled_from(TRAIN_MISTAKES), max_size=2, unique=True),
       plan=st.booleans())
def test_train_and_plan_checks_keep_the_contract(tmp_path, demo_images, monkeypatch, data, overrides, plan):
    """train.py's checks (everything before the weights load) and plan=true: the same answers, nothing written."""
    from textinv.training.job import check_plan

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    root = scratch(tmp_path)
    folder = make_data(root, data, demo_images)
    before = tree(root)
    cfg = compose(*tiny_overrides(root / "run", folder), *overrides)
    code, err = call(lambda _: check_plan(cfg) if plan else prepare(cfg), [])
    assert_contract(code, err, root, before, None)
    if not plan and data == "good" and not overrides:
        assert code == 0
    if data in ("empty", "hidden", "truncated", "caption_latin1", "caption_huge") and not plan:
        assert code == 2


@ENTRY
@given(embeddings=st.lists(st.sampled_from(["file", "run", "unfinished", "missing", "huge", "hypernet_name"]),
                           min_size=1, max_size=2),
       value=st.sampled_from([[], ["num_images=0"], ["steps=-1"], ["guidance_scale=nan"], ["seed=x"]]))
def test_generate_checks_keep_the_contract(tmp_path, embeddings, value):
    """generate.py's checks before weights: its values (the validation layer) and its files (run folders too)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from safetensors.torch import save_file

    from conftest import CONF
    from textinv.methods.textual_inversion.loading import EmbeddingFiles
    from textinv.models.frozen_sd import ModelSource
    from textinv.validation import GENERATE_RULES, validate

    root = scratch(tmp_path)
    made = []
    for i, kind in enumerate(embeddings):
        path = root / f"e{i}"
        if kind == "file":
            path = path.with_suffix(".safetensors")
            save_file({f"<e{i}>": torch.ones(1, 32)}, str(path))
        elif kind in ("run", "unfinished"):
            path.mkdir()
            (path / "config.yaml").write_text("{}")
            if kind == "run":
                save_file({f"<e{i}>": torch.ones(1, 32)}, str(path / f"e{i}.safetensors"))
                (path / "run.json").write_text("{}")
        elif kind == "huge":
            path = path.with_suffix(".pt")
            with open(path, "wb") as f:
                f.truncate(1_200_000_000)
        made.append(str(path))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("generate", overrides=["model=tiny", "prompt='a <e0>'", *value,
                                                   f"embeddings=[{','.join(made)}]"])
    before = tree(root)

    def checks(_):
        validate(cfg, GENERATE_RULES)
        source = ModelSource("tiny")
        EmbeddingFiles.read(cfg, source, source.load_tokenizer())

    code, err = call(checks, [])
    assert_contract(code, err, root, before, None)
    if all(k in ("file", "run") for k in embeddings) and not value and len(set(embeddings)) == len(embeddings):
        assert code == 0, err


@ENTRY
@given(port=st.sampled_from(["8000", "0", "70000", "x"]), runs=st.sampled_from(["folder", "file", "missing"]))
def test_app_arguments_keep_the_contract(tmp_path, monkeypatch, port, runs):
    import uvicorn

    from textinv.app.main import main

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)  # the checks, not the server
    root = scratch(tmp_path)
    target = root / "runs"
    if runs == "folder":
        target.mkdir()
    elif runs == "file":
        target.write_text("a user's file")
    before = tree(root)
    code, err = call(main, ["--runs", str(target), "--port", port])
    assert_contract(code, err, root, before, None)
