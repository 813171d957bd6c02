"""Sweeps (sweeps/), skipping finished points, W&B fields per point, DDP on CPU, and cluster launchers."""

from __future__ import annotations

import glob
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF, compose, embedding, run_script, tiny_overrides
from textinv.training.ddp import check_ranks
from textinv.errors import UserError
from textinv.training.job import train
from textinv.training.sweeps import in_multirun

CONCEPTS = {p.stem for p in (CONF / "concept").glob("*.yaml")}
SWEEPS = {  # name: (fixed concept, swept key, its values)
    "lr": ("deku_tree", "lr", "5e-4,1e-3,2.5e-3,5e-3,1e-2"),
    "seed": ("deku_tree", "seed", "0,1,2,3"),
    "init": ("puc_innovation_center", "init", "building,tower"),
    "steps": ("groot", "steps", "5000"),
}


def compose_hydra(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=["run_dir=/tmp/unused", *overrides], return_hydra_config=True)


def sweep_args(sweep_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    """A sweep on the tiny demo: the point folders come from the sweep config, under sweep_dir."""
    return ["experiment=tiny", "concept=demo", f"concept.data_dir='{data_dir}'", f"hydra.sweep.dir='{sweep_dir}'",
            "eval=off", "~callbacks.progress_bar", *extra]


# --- sweep definitions --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SWEEPS))
def test_sweep_config_is_deterministic_and_names_points_by_swept_values(name):
    concept, key, values = SWEEPS[name]
    cfg = compose_hydra(f"sweep={name}")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"concept": concept, key: values}
    assert concept in CONCEPTS
    assert cfg.hydra.sweep.dir == f"outputs/sweeps/{name}"  # no timestamp: a re-run finds its points
    value = values.split(",")[-1]
    point = compose_hydra(f"sweep={name}", f"concept={concept}", f"{key}={value}")
    expected = f"concept={concept},{key}={point[key]}"
    assert point.hydra.sweep.subdir == expected and "now" not in OmegaConf.to_yaml(point.hydra.sweep)
    assert point.logger.wandb.group == name and point.logger.wandb.name == expected
    assert dict(point.logger.wandb.config) == {"lr": point.lr, "steps": point.steps, "seed": point.seed,
                                               "init": point.init, "concept": concept, "baseline": False}


def test_table_sweep_is_every_concept_with_and_without_training():
    cfg = compose_hydra("sweep=table")
    params = cfg.hydra.sweeper.params
    study = {c for c in CONCEPTS if c != "demo" and not c.startswith("toy_")}  # toy_*: the miniature world's
    assert set(params.concept.split(",")) == study and params.baseline == "false,true"
    point = compose_hydra("sweep=table", "concept=groot", "baseline=true")
    assert point.hydra.sweep.subdir == "concept=groot,baseline=True" and point.logger.wandb.config.baseline is True


def test_steps_sweep_snapshots_and_evaluates_the_study_steps_in_one_run():
    cfg = compose_hydra("sweep=steps", "concept=groot", "steps=5000")
    steps = [0, 250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000]
    assert list(cfg.callbacks.embedding_writer.at_steps) == steps and list(cfg.eval.at_steps) == steps
    assert cfg.steps == 5000 and len(cfg.hydra.sweeper.params.steps.split(",")) == 1


def test_outside_sweeps_the_names_stay_as_they_were():
    cfg = compose("run_dir=/tmp/unused")
    assert cfg.logger.wandb.name == "demo-seed0" and cfg.logger.wandb.group is None


# --- skipping finished points -------------------------------------------------------------------
def test_finished_point_is_skipped_only_when_asked(tmp_path, demo_images, monkeypatch, caplog):
    from textinv.training import job as run_module

    run_dir = tmp_path / "done"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{}")
    cfg = compose(*tiny_overrides(run_dir, demo_images))
    assert not in_multirun()  # outside a Hydra multirun a finished folder is refused, as before
    with pytest.raises(UserError, match="already holds a finished run"):
        train(cfg)
    monkeypatch.setattr(run_module, "prepare", lambda cfg: pytest.fail("a skipped point must load nothing"))
    with caplog.at_level("INFO"):
        assert train(cfg, skip_finished=True) == run_dir
    assert "skipping finished point" in caplog.text
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"]


def wandb_records(run_dir: Path) -> list:
    """The records of the offline W&B run under run_dir (its .wandb file: a LevelDB-style log of protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    data, pos, block, chunk, records = Path(path).read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last fragment
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_run_info(run_dir: Path) -> tuple[str, str, dict]:
    import json

    group, name, config = "", "", {}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group, name = record.run.run_group, record.run.display_name
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    return group, name, config


def test_sweep_points_are_wandb_runs_and_a_rerun_skips_finished_points(tmp_path, demo_images):
    sweep_dir = tmp_path / "sweeps" / "lr"
    args = sweep_args(sweep_dir, demo_images, "sweep=lr", "lr=1e-3,2e-3", "steps=2",
                      "callbacks.model_checkpoint.every_n_train_steps=1")
    proc = run_script("train.py", *args, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = sweep_dir / "concept=demo,lr=0.001", sweep_dir / "concept=demo,lr=0.002"
    for point, lr in ((first, 0.001), (second, 0.002)):
        assert (point / "run.json").is_file()
        group, name, config = wandb_run_info(point)
        assert (group, name) == ("lr", point.name)
        assert {k: config.get(k) for k in ("lr", "steps", "seed", "init", "concept", "baseline")} == {
            "lr": lr, "steps": 2, "seed": 0, "init": "toy", "concept": "demo", "baseline": False}
        assert config["effective_batch"] == 2 and config["effective_lr"] == pytest.approx(lr * 2)

    # interrupt the second point after step 1: no run.json, no final files, last.ckpt from step 1
    finished = embedding(second)
    for name in ("run.json", "diffusers/learned_embeds.safetensors", "demo-toy.pt"):
        (second / name).unlink()
    shutil.copy(second / "checkpoints/step000001.ckpt", second / "checkpoints/last.ckpt")
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file() and p.suffix != ".log"}

    again = run_script("train.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    out = again.stdout + again.stderr
    assert f"skipping finished point {first}" in out
    assert f"resuming the unfinished run in {second}" in out and f"skipping finished point {second}" not in out
    assert {p: p.stat().st_mtime_ns for p in before} == before  # the finished point is untouched
    assert (second / "run.json").is_file() and torch.equal(embedding(second), finished)  # exact resume


# --- DDP ------------------------------------------------------------------------------------------
def test_rank_check_catches_disagreeing_vectors_and_repeated_samples():
    same = torch.ones(2, 1, 4)
    assert check_ranks(same, torch.tensor([[0], [1]]), 1, atol=0.0) == 0.0
    with pytest.raises(RuntimeError, match="ranks disagree at step 3"):
        check_ranks(torch.stack([torch.zeros(1, 4), torch.full((1, 4), 1e-3)]), torch.tensor([[0], [1]]), 3, 1e-6)
    with pytest.raises(RuntimeError, match="same samples"):
        check_ranks(same, torch.tensor([[4], [4]]), 2, 1e-6)


def test_ddp_two_cpu_ranks_agree_and_match_one_process_with_the_same_effective_batch(tmp_path, demo_images):
    """2 gloo ranks x batch 1 == 1 process x batch 2; run as a two-point sweep through train.py, so Lightning's
    re-launch of the script for rank 1 runs one sweep point (in a folder whose name holds '=' and ',')."""
    sweep_dir = tmp_path / "ddp"
    args = sweep_args(sweep_dir, demo_images, "sweep=seed", "seed=0,1", "steps=3", "data.batch_size=1",
                      "logger=csv", "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32",
                      "trainer.devices=2", "callbacks.data_parallel.every_n_steps=1",
                      "callbacks.model_checkpoint.every_n_train_steps=2", "callbacks.embedding_writer.every_n_steps=2")
    proc = run_script("train.py", *args, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = [sweep_dir / "concept=demo,seed=0", sweep_dir / "concept=demo,seed=1"]
    for point in points:
        log = (point / "train.log").read_text()
        assert "2 rank(s) x batch 1 x accumulation 1 = effective batch 2; learning rate 0.004" in log
        for step, samples in ((1, "[[0], [1]]"), (2, "[[2], [3]]"), (3, "[[4], [5]]")):  # each rank its own
            assert f"step {step}: 2 ranks hold the same trained weights (max difference 0); samples {samples}" in log
        rank1_log = (point / "train_ddp_rank1.log").read_text()
        assert "loaded frozen model" in rank1_log and "wrote" not in rank1_log  # rank 1 ran, rank 0 wrote
        assert (point / "run.json").is_file()

    single = tmp_path / "single"
    train(compose(*tiny_overrides(single, demo_images, 3), "data.batch_size=2", "logger=csv"))
    assert "effective_batch: 2" in (single / "hparams.yaml").read_text()
    ddp, other_seed = embedding(points[0]), embedding(points[1])
    assert torch.allclose(ddp, embedding(single), rtol=0, atol=1e-6)
    assert (ddp - other_seed).abs().max() > 1e-3  # the tolerance is far below what a seed changes
    written = {p.relative_to(single) for p in single.rglob("*") if p.is_file()}
    assert {p.relative_to(points[0]) for p in points[0].rglob("*") if p.is_file()} == (
        written | {Path("train.log"), Path("train_ddp_rank1.log")})


# --- a steps sweep on the command line ----------------------------------------------------------------
def test_a_command_line_steps_sweep_is_one_run_snapshotted_at_each_step(tmp_path, demo_images, reference_run):
    sweep_dir = tmp_path / "steps"
    args = [a for a in tiny_overrides(tmp_path, demo_images) if not a.startswith(("run_dir=", "steps="))]
    proc = run_script("train.py", "-m", "steps=3,6", *args, f"hydra.sweep.dir='{sweep_dir}'",
                      "hydra.sweep.subdir=point${steps}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps sweep 3,6: one run per point to step 6" in proc.stderr
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["point6"]  # one run, not two
    run = sweep_dir / "point6"
    snapshots = {p.name for p in (run / "snapshots/diffusers").glob("*.safetensors")}
    assert {"learned_embeds-step000003.safetensors", "learned_embeds-step000006.safetensors"} <= snapshots
    config = OmegaConf.load(run / "config.yaml")
    assert list(config.eval.at_steps) == [3, 6] and list(config.callbacks.embedding_writer.at_steps) == [3, 6]
    # the extra snapshot and evaluation steps change nothing in training: the same embedding as a plain 6-step run
    assert torch.equal(embedding(run), embedding(reference_run))


def test_a_steps_sweep_and_explicit_evaluation_steps_conflict(tmp_path):
    proc = run_script("train.py", "-m", "steps=3,6", "eval.at_steps=[1]", f"hydra.sweep.dir='{tmp_path / 's'}'",
                      timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "eval.at_steps=[1] and a steps sweep" in lines[0]
    assert not (tmp_path / "s").exists()


# --- launchers -------------------------------------------------------------------------------------
def test_joblib_launcher_runs_points_in_parallel_processes(tmp_path, demo_images):
    sweep_dir = tmp_path / "joblib"
    proc = run_script("train.py", *sweep_args(sweep_dir, demo_images, "sweep=seed", "seed=3,4", "steps=2",
                                              "logger=csv", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
                      timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vectors = [embedding(sweep_dir / f"concept=demo,seed={seed}") for seed in (3, 4)]
    assert (vectors[0] - vectors[1]).abs().max() > 0  # two points, two seeds, two embeddings


def test_submitit_local_launcher_runs_two_points(tmp_path, demo_images):
    sweep_dir = tmp_path / "submitit"
    proc = run_script("train.py", *sweep_args(sweep_dir, demo_images, "sweep=lr", "lr=1e-3,2e-3", "steps=2",
                                              "logger=csv", "hydra/launcher=submitit_local",
                                              "hydra.launcher.timeout_min=10"), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for lr in ("0.001", "0.002"):
        point = sweep_dir / f"concept=demo,lr={lr}"
        assert (point / "run.json").is_file() and (point / "diffusers/learned_embeds.safetensors").is_file()
    assert glob.glob(str(sweep_dir / ".submitit" / "*" / "*_result.pkl"))


def test_slurm_launcher_gives_one_task_and_gpu_per_rank_and_requeues(tmp_path, monkeypatch):
    """The sbatch script submitit would submit for one point (a stand-in `srun` on PATH; nothing is submitted)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = compose_hydra("sweep=lr", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                        "trainer.num_nodes=2", f"hydra.sweep.dir={tmp_path}")
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["_target_"].endswith("SlurmLauncher") and params["max_num_timeout"] > 0
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    # the same parameter mapping as hydra_submitit_launcher's BaseSubmititLauncher.launch
    params.pop("_target_")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -u job.py", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--signal=USR2@120"):
        assert f"#SBATCH {line}" in sbatch
    assert "srun " in sbatch


# --- W&B sweep files (sweeps/) ------------------------------------------------------------------
WANDB_SWEEPS = sorted((CONF.parent / "sweeps" / "wandb").glob("*.yaml"))


def wandb_agent_argv(spec: dict, values: dict, run_id: str) -> list[str]:
    """The overrides `wandb agent` passes to train.py for one point, built with W&B's own helpers."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_RUN_ID", run_id)
        command = create_sweep_command(list(spec["command"]))
    assert command[:3] == ["${env}", "${interpreter}", "${program}"]
    argv = []
    for chunk in command[3:]:
        argv += macros[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return argv


def test_wandb_sweep_files_exist():
    assert {p.stem for p in WANDB_SWEEPS} >= {"lr", "seed", "init"}


@pytest.mark.parametrize("path", WANDB_SWEEPS, ids=lambda p: p.stem)
def test_wandb_sweep_points_compose_into_their_own_online_run_folders(path):
    import itertools

    import yaml

    spec = yaml.safe_load(path.read_text())
    assert (CONF.parent / spec["program"]).is_file() and spec["method"] in ("grid", "random")
    choices = {k: [p["value"]] if "value" in p else p.get("values") or [p["min"], p["max"]]
               for k, p in spec["parameters"].items()}
    for combo in itertools.islice(itertools.product(*choices.values()), 8):  # a random search: its corners
        values = dict(zip(choices, combo))
        cfg = compose_hydra(*wandb_agent_argv(spec, values, "run42"))
        for key, value in values.items():
            actual = cfg.concept.name if key == "concept" else cfg[key]
            assert actual == pytest.approx(value) if isinstance(value, float) else actual == value, key
        assert cfg.logger.wandb.offline is False
        assert cfg.hydra.run.dir == f"outputs/wandb_sweeps/{spec['name']}/run42"
    hydra_twin = CONF.parent / "sweeps" / path.name
    if hydra_twin.is_file():  # the same points as the Hydra sweep of that name
        params = OmegaConf.load(hydra_twin).hydra.sweeper.params
        for key, values in choices.items():
            expected = str(params[key]).split(",")
            assert values == [type(v)(e) for v, e in zip(values, expected)] and len(values) == len(expected), key
