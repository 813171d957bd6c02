"""Interruption, determinism, numerical faults, atomic writes, and the bad-input battery."""

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, compose, embedding, run_script, tiny_overrides
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
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
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
