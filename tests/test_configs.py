"""Every choice of every `conf/` group, composed and built without loading weights (as lightning-hydra-template's
tests/test_configs.py does), so a broken preset fails here in seconds instead of minutes into a run.

The groups are read from the folder, so a new group (or a new choice in one) is covered without editing this file.
Each choice is composed on top of the defaults of conf/train.yaml (and of conf/generate.yaml where that file uses
the group), then: the validation layer, the run's plan, every `_target_` importable and taking the keys it is
given, and the objects a run builds before its weights load (model source, concept, data module, evaluation
settings, module, callbacks, loggers, a CPU trainer, Hydra's sweeper and launcher). A multirun preset
(`sweep=`) is also split into its points as Hydra's sweeper would, and every point is composed and checked.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from conftest import CONF
from textinv.evaluation.plan import make_plan
from textinv.evaluation.schedule import protocols
from textinv.methods.base import Method
from textinv.training.job import build_trainer, check_resolution
from textinv.validation import GENERATE_RULES, TRAIN_RULES, validate

# Folders under conf/ that hold YAML but are not Hydra groups, and why.
NOT_GROUPS = {"sweep/wandb": "W&B sweep files for `wandb sweep` (sweeps/README.md), not Hydra configs"}


def config_groups() -> list[str]:
    """Every folder under conf/ holding a .yaml (symlinked folders such as sweep/ -> sweeps/ included)."""
    found = []
    for folder, _, files in os.walk(CONF, followlinks=True):
        group = Path(folder).relative_to(CONF).as_posix()
        if group != "." and group not in NOT_GROUPS and any(f.endswith(".yaml") for f in files):
            found.append(group)
    return sorted(found)


def group_options(groups: list[str]) -> dict[str, list[str]]:
    """What Hydra accepts for each group: conf/'s files plus installed plugins' (hydra/launcher=joblib, ...)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return {group: loader.get_group_options(group) for group in groups}


GROUPS = config_groups()
OPTIONS = group_options(GROUPS)
CHOICES = [(group, option) for group in GROUPS for option in OPTIONS[group]]


def compose(config: str, overrides: list[str]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside the hydra_loader fixture
        return hydra_compose(config, overrides=overrides, return_hydra_config=True)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config, overrides=overrides, return_hydra_config=True)


@pytest.fixture
def hydra_loader():
    """Hydra initialised on conf/ for the test's length (the sweeper and launcher read its config loader)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def job_view(cfg: DictConfig) -> DictConfig:
    """What the task function sees: the composed config without its `hydra` node (as Hydra's run does)."""
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    return job


def targets(node, where: str = ""):
    """(key path, node) of every `_target_` node in a config, nested ones included."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield where, node
        for key in node:
            yield from targets(node._get_node(key), f"{where}.{key}".lstrip("."))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from targets(item, f"{where}[{i}]")


def check_targets(cfg: DictConfig) -> None:
    """Every `_target_` imports, and its class or function takes every key the config gives it (a typo such as
    `num_vector:` fails here, not when the object is built minutes later)."""
    for where, node in targets(cfg):
        target = get_object(node._target_)
        params = inspect.signature(target).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue  # takes anything (e.g. WandbLogger passes extras on to wandb.init)
        unknown = [k for k in node if not str(k).startswith("_") and k not in params]
        assert not unknown, f"{where}: {node._target_} takes no {unknown}"


def ships_its_weights(source) -> bool:
    """Built in code (tiny, *_arch) or a folder in the project (toy): its configs can be read offline."""
    return source.source != "hub" or (source.path is not None and Path(source.path, "model_index.json").is_file())


def build_train(cfg: DictConfig) -> None:
    """What train.py builds before any weights load; the trainer on CPU (no accelerator is assumed here)."""
    validate(cfg, TRAIN_RULES)
    plan = make_plan(cfg)
    assert plan["train_micro_steps"] >= (0 if cfg.baseline else 1)
    check_targets(cfg)
    concept = instantiate(cfg.concept, _convert_="all")
    source = instantiate(cfg.model)
    if ships_its_weights(source):
        check_resolution(cfg.data.resolution, source.info().resolution_multiple)
    instantiate(cfg.data, _partial_=True, _convert_="all")(concept=concept)
    assert protocols(instantiate(cfg.eval, _convert_="all"), final=True)
    method = instantiate(cfg.method, _convert_="all")(word=concept.placeholder, initializer=cfg.init, seed=cfg.seed)
    assert isinstance(method, Method)  # built without weights; it attaches at run time
    assert callable(instantiate(cfg.module, _convert_="all"))  # a partial: the frozen model comes at run time
    cpu = cfg.copy()
    cpu.trainer.accelerator = "cpu"
    trainer = build_trainer(cpu)
    assert trainer.max_steps == cfg.steps


def build_hydra(cfg: DictConfig, loader) -> None:
    """Hydra's sweeper and launcher for this config, built as `-m` builds them (nothing is launched)."""
    context = HydraContext(config_loader=loader, callbacks=Callbacks(cfg))
    Plugins.instance().instantiate_sweeper(hydra_context=context, task_function=lambda _: None, config=cfg)
    OmegaConf.to_container(cfg.hydra.launcher, resolve=True)  # e.g. slurm's nodes: ${trainer.num_nodes}


def sweep_points(cfg: DictConfig) -> list[list[str]]:
    """A multirun preset's points, as Hydra's basic sweeper splits its params (sweep values parsed)."""
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides(params)
    return [point for batch in BasicSweeper.split_arguments(overrides, None) for point in batch]


def test_the_groups_are_found_from_the_folder():
    used = set(compose("train", ["run_dir=/tmp/unused"]).hydra.runtime.choices)
    in_conf = {g for g in used if (CONF / g).is_dir()}  # hydra/launcher, model, ... (not Hydra's own hydra/help)
    assert in_conf <= set(GROUPS) and {"model", "concept", "trainer", "sweep", "hydra/launcher"} <= set(GROUPS)
    for folder, why in NOT_GROUPS.items():  # still what it says it is
        for file in (CONF / folder).glob("*.yaml"):
            assert "program" in yaml.safe_load(file.read_text()), (file, why)


@pytest.mark.parametrize(("group", "option"), CHOICES, ids=[f"{g}={o}" for g, o in CHOICES])
def test_every_choice_composes_validates_and_builds(group, option, tmp_path, hydra_loader):
    cfg = compose("train", [f"{group}={option}", f"run_dir={tmp_path}"])
    build_hydra(cfg, hydra_loader)
    build_train(job_view(cfg))
    if cfg.hydra.mode == RunMode.MULTIRUN:
        points = sweep_points(cfg)
        assert points, f"{group}={option} is a multirun with no points"
        for point in points:
            job = job_view(compose("train", [f"{group}={option}", f"run_dir={tmp_path}", *point]))
            validate(job, TRAIN_RULES)
            make_plan(job)
            instantiate(job.concept, _convert_="all")
            instantiate(job.model)


GENERATE_GROUPS = sorted(set(compose("generate", ["prompt=x", "out_dir=/tmp/unused"]).hydra.runtime.choices)
                         & set(GROUPS))
GENERATE_CHOICES = [(g, o) for g in GENERATE_GROUPS for o in OPTIONS[g]]


@pytest.mark.parametrize(("group", "option"), GENERATE_CHOICES, ids=[f"{g}={o}" for g, o in GENERATE_CHOICES])
def test_every_generate_choice_composes_validates_and_builds(group, option, tmp_path, hydra_loader):
    cfg = compose("generate", [f"{group}={option}", "prompt='a photo of <x>'", f"out_dir={tmp_path}"])
    build_hydra(cfg, hydra_loader)
    job = job_view(cfg)
    validate(job, GENERATE_RULES)
    check_targets(job)
    source = instantiate(job.model)
    if ships_its_weights(source):
        assert source.info().widths


def test_a_broken_preset_fails_here(tmp_path):
    """The checks above can fail: a misspelt key, a bad value and an unknown target are each caught."""
    cfg = job_view(compose("train", ["experiment=tiny", f"run_dir={tmp_path}"]))
    typo = cfg.copy()
    with open_dict(typo):
        typo.data.resolutoin = 32
    with pytest.raises(AssertionError, match="resolutoin"):
        check_targets(typo)
    bad = cfg.copy()
    bad.data.flip_p = 1.5
    with pytest.raises(Exception, match="data.flip_p"):
        build_train(bad)
    lost = cfg.copy()
    lost.model._target_ = "textinv.models.no_such_module.ModelSource"
    with pytest.raises(Exception, match="no_such_module"):
        build_train(lost)
