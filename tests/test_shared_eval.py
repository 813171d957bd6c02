"""Evaluation shared by DDP ranks (textinv.evaluation.shared): 2 gloo CPU ranks give byte-identical images and
equal metrics to 1 process, for a training run's evaluations and for the baseline row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SMALL_CLIP, compose, embedding, run_script, tiny_overrides
from textinv.evaluation.shared import my_batches

# a few images per prompt in batches of 2: several batches per evaluation, an odd one at the end
EVAL = ["eval.every_n_steps=0", "eval.prompts=['a photo of {} on the moon']", "eval.at_steps=[0]", "eval.num_images=3", "eval.sampler_steps=3",
        "eval.light.num_images=2", "eval.light.sampler_steps=2", "eval.batch_size=2", "eval.fid.enabled=false",
        "callbacks.validation_loss.enabled=false", *SMALL_CLIP]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # per rank, as the 1-process run below gets
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32", "trainer.devices=2"]


def test_batches_are_dealt_in_the_one_process_order():
    one = my_batches(7, 2, 0, 1)
    two = my_batches(7, 2, 0, 2) + my_batches(7, 2, 1, 2)
    assert sorted(two, key=lambda r: r.start) == one == [range(0, 2), range(2, 4), range(4, 6), range(6, 7)]
    assert my_batches(7, 2, 1, 2) == [range(2, 4), range(6, 7)]


def images(run: Path) -> dict[str, bytes]:
    folder = run / "eval" / "images"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def metrics(run: Path) -> list[dict]:
    data = json.loads((run / "eval" / "metrics.json").read_text())
    return [{k: v for k, v in e.items() if k not in ("settings",)} for e in data["evaluations"]]


@pytest.mark.timeout(2400)  # 4 processes of 2 ranks; minutes on a shared 2-core machine
def test_two_cpu_ranks_evaluate_like_one_process(tmp_path, demo_images):
    from textinv.training.job import train

    common = [*tiny_overrides(Path("X"), demo_images, 2)[:-1], *EVAL]  # eval=off dropped: evaluated here
    common = [o for o in common if not o.startswith("run_dir=")]
    runs = {}
    # lr far below a float32 step of the vector (Adam's first update is about lr): the trained vector stays bitwise
    # the initializer's on both, so the last step's evaluations compare byte for byte too (2 ranks x batch 1 and 1
    # process x batch 2 otherwise train vectors equal to ~1e-6 only: tests/test_sweeps.py)
    common.append("lr=1e-12")
    for name, extra in (("ti", ["data.batch_size=1"]), ("sd", ["baseline=true"])):
        two = tmp_path / f"{name}-2ranks"
        proc = run_script("train.py", *common, *extra, *DDP, f"run_dir='{two}'", f"hydra.run.dir='{two}'",
                          f"eval.baseline_cache='{tmp_path / 'cache2'}'", timeout=1800, env=ONE_THREAD)
        assert proc.returncode == 0, proc.stderr[-3000:]
        one = tmp_path / f"{name}-1rank"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each rank has: CPU kernels may round differently with other thread counts
        try:
            train(compose(*common, *(["data.batch_size=2"] if name == "ti" else extra), f"run_dir='{one}'",
                          f"eval.baseline_cache='{tmp_path / 'cache1'}'"))
        finally:
            torch.set_num_threads(threads)
        runs[name] = (one, two)
    ti1, ti2 = runs["ti"]
    log = (ti2 / "train.log").read_text()
    assert "2 rank(s)" in log
    # every evaluation (step 0 light; the last step light and full) has the same images, byte for byte, and the
    # same scores
    assert torch.equal(embedding(ti1), embedding(ti2))
    a, b = images(ti1), images(ti2)
    assert {k.split("/")[0] for k in a} == {"step000000-light", "step000002-light", "step000002"}
    assert a == b
    m1, m2 = metrics(ti1), metrics(ti2)
    assert [e["step"] for e in m1] == [0, 2, 2]
    assert m1 == m2
    sd1, sd2 = runs["sd"]
    assert images(sd1) == images(sd2) and len(images(sd1)) > 0  # light and full baseline images
    assert metrics(sd1) == metrics(sd2)
    assert "baseline row on 2 ranks" in (sd2 / "train.log").read_text()
