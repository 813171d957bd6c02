"""The training job: config -> checks -> data, training method, frozen model, module, callbacks, loggers -> fit.

Cheap checks come first (numbers, output folder, images, tokenizer), so bad input fails in seconds
with one line, before gigabytes of weights load.
"""

from __future__ import annotations

import json
import logging
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from textinv.utils.atomic import atomic_write_text
from textinv.training.callbacks import (AtomicCheckpointIO, FinalEvaluationStopped, FinishCompletedTraining,
                                        GracefulStop)
from textinv.data.datamodule import Concept, ConceptDataModule
from textinv.errors import Interrupted, UserError
from textinv.training.cost import CostMeter
from textinv.training.validation_loss import ValidationLoss
from textinv.training.module import check_prediction_type
from textinv.evaluation.callback import EvaluationCallback
from textinv.evaluation.recorder import EvaluationRecorder
from textinv.evaluation.schedule import evaluation_schedule
from textinv.evaluation.plan import make_plan
from textinv.evaluation.evaluator import EvalConfig, Evaluator, baseline_cache_key
from textinv.methods.base import Method
from textinv.training.lr_schedule import parse_lr
from textinv.runs.results import BASELINE_ROW
from textinv.models.frozen_sd import ModelSource
from textinv.models.speed import SpeedSettings, apply_speed
from textinv.training.resume import check_resume, data_identity, log_applied_changes, model_identity, run_identity
from textinv.runs.layout import FINISHED_MARKER, LAST_CHECKPOINT, config_file, finished_marker, last_checkpoint
from textinv.runs.lock import folder_lock
from textinv.training.sweeps import in_multirun
from textinv.utils.atomic import confined
from textinv.utils.cache import cache_dir
from textinv.validation import validate

log = logging.getLogger(__name__)

# Resuming mid-"epoch" is exact here (textinv.data.datamodule.StepSampler), and the frozen parts stay in eval mode on purpose.
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")


def check_numbers(cfg: DictConfig) -> None:
    """Every user-facing value against its declared type and range (textinv.validation), and the learning-rate
    schedule string against the run's length."""
    validate(cfg)
    rates = parse_lr(cfg.lr)
    if len(rates.pieces) > 1:
        if cfg.module.optim.schedule != "constant":
            raise UserError(f"lr={cfg.lr!r} is a schedule and module.optim.schedule={cfg.module.optim.schedule!r} "
                            "another; use one of them (module.optim.schedule=constant with a schedule string)")
        if rates.end_step is not None and rates.end_step != cfg.steps:
            raise UserError(f"lr={cfg.lr!r} ends training at step {rates.end_step} but steps={cfg.steps}; set "
                            f"steps={rates.end_step}, or end the schedule with a bare rate (it then runs to the end)")


def check_resolution(resolution: int, multiple: int) -> None:
    if not isinstance(resolution, int) or resolution < multiple or resolution % multiple:
        fix = max(multiple, round(resolution / multiple) * multiple) if isinstance(resolution, int) else 512
        raise UserError(f"data.resolution={resolution} cannot go through this model's VAE and UNet: it must be a "
                        f"positive multiple of {multiple}; try data.resolution={fix}")


def resolve_resume(run_dir: Path, ckpt_path: str | None) -> str | None:
    """Never overwrite a finished run; pick up an unfinished one where it stopped."""
    if finished_marker(run_dir).exists():
        raise UserError(f"{run_dir} already holds a finished run ({FINISHED_MARKER}); choose a new "
                        "hydra.run.dir=... or move that run away")
    last = last_checkpoint(run_dir)
    if ckpt_path in (None, "last"):
        if last.is_file():
            log.info("resuming the unfinished run in %s from %s", run_dir, last)
            return str(last)
        if ckpt_path == "last":
            raise UserError(f"ckpt_path=last but {last} does not exist; drop ckpt_path to start fresh")
        return None
    if Path(ckpt_path).is_dir():  # a run folder (or its checkpoints/): its last checkpoint
        for candidate in (last_checkpoint(ckpt_path), Path(ckpt_path) / LAST_CHECKPOINT):
            if candidate.is_file():
                log.info("ckpt_path=%s is a folder: resuming from its %s", ckpt_path, candidate)
                return str(candidate)
        raise UserError(f"ckpt_path={ckpt_path} is a folder without checkpoints/{LAST_CHECKPOINT}; give a .ckpt file "
                        "from a run's checkpoints/ folder or 'last'")
    if not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path={ckpt_path} does not exist; give a .ckpt from a run's checkpoints/ folder or 'last'")
    return str(ckpt_path)


def check_word(tokenizer, word) -> None:
    """The baseline's prompts hold the initializer word in place of the concept: it must be a word."""
    if word is None or not str(word).strip():
        raise UserError("the initializer word is empty; set init=<word> (e.g. init=tree)")
    if not tokenizer(str(word), add_special_tokens=False).input_ids:
        raise UserError(f"init={word!r} tokenizes to nothing; use a plain word such as init=tree")


def checked_method(cfg: DictConfig, concept: Concept, source: ModelSource, info, tokenizer,
                   train_prompts: list[str]) -> Method:
    """The model's limits and the method's own checks, before any big weights load (training and plan=true)."""
    check_resolution(cfg.data.resolution, info.resolution_multiple)
    if not cfg.baseline:  # the baseline only samples; training needs a loss target it knows
        check_prediction_type(source.name, info.prediction_type)
    method: Method = instantiate(cfg.method, _convert_="all")(word=concept.placeholder, initializer=cfg.init,
                                                              seed=cfg.seed)
    eval_prompts = [p.format(concept.placeholder) for p in (cfg.eval.get("prompts") or concept.prompts or [])
                    if "{}" in p]
    method.check(tokenizer, train_prompts, eval_prompts)
    method.check_model(source)
    if cfg.baseline:
        check_word(tokenizer, cfg.init)
    return method


def prepare(cfg: DictConfig) -> tuple[Path, str | None, Concept, ModelSource, ConceptDataModule, Method]:
    """All checks that need no big weights (the metric networks' weights are checked in `build_evaluator`)."""
    check_numbers(cfg)
    check_run_values(cfg)
    run_dir = Path(cfg.run_dir)
    ckpt_path = resolve_resume(run_dir, cfg.ckpt_path)
    concept: Concept = instantiate(cfg.concept, _convert_="all")
    source: ModelSource = instantiate(cfg.model)
    datamodule: ConceptDataModule = instantiate(cfg.data, _partial_=True, _convert_="all")(concept=concept)
    datamodule.load()
    train_prompts = [] if cfg.baseline else datamodule.dataset(1).all_prompts()
    method = checked_method(cfg, concept, source, source.info(), source.load_tokenizer(), train_prompts)
    if ckpt_path is not None:
        check_resume(ckpt_path, identity(cfg, concept, source, method, datamodule))
        log_applied_changes(config_file(run_dir), cfg)  # what passed the identity: applied, and said so
    return run_dir, ckpt_path, concept, source, datamodule, method


def identity(cfg: DictConfig, concept: Concept, source: ModelSource, method: Method,
             datamodule: ConceptDataModule | None = None) -> dict:
    """The run identity (textinv.training.resume): settings, the data's content hashes, the weights' fingerprint."""
    data = data_identity(datamodule.files) if datamodule is not None else None
    return run_identity(cfg, concept.placeholder, source.name, source.path or source.hub_id,
                        {"method": method.name, **method.identity()}, data=data,
                        model_fingerprint=model_identity(source.fingerprint()))


def build_evaluator(cfg: DictConfig, concept: Concept, datamodule: ConceptDataModule) -> Evaluator | None:
    """CLIP/Inception plus the training images' features, once per run, on rank 0; the other DDP ranks get an
    evaluator that only generates (their share of every evaluation: textinv.evaluation.shared)."""
    eval_cfg: EvalConfig = instantiate(cfg.eval, _convert_="all")
    if not eval_cfg.enabled:
        return None
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda") else "cpu"
    return Evaluator(eval_cfg, concept.kind, concept.prompts, datamodule.images, device=device,
                     scoring=rank_zero_only.rank == 0)


def run_header(cfg: DictConfig, concept: Concept, source: ModelSource, method: Method) -> dict:
    """What a results table groups by: written at the top of eval/metrics.json."""
    return {"concept": concept.name, "kind": concept.kind, "placeholder": concept.placeholder,
            "initializer": cfg.init, "baseline": bool(cfg.baseline), "model": source.name, "seed": cfg.seed,
            "model_location": source.path or source.hub_id, "model_fingerprint": model_identity(source.fingerprint()),
            "lr": cfg.lr, "steps": cfg.steps,
            "method": method.name,
            "row": BASELINE_ROW if cfg.baseline else method.row_label, **method.header(), "family": source.family.name}


@contextmanager
def baseline_signals(run_dir: Path):
    """SIGINT/SIGTERM during a baseline run stop it at once with one line saying what happened (the default
    SIGTERM ended the process without a word)."""
    import threading

    def stop(signum, frame):
        raise Interrupted(f"stopped by {signal.Signals(signum).name} during the baseline evaluation in {run_dir}: "
                          "the run is not marked finished (no run.json); re-run the same command to evaluate again "
                          "(image sets already complete in eval.baseline_cache are reused)", signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def speed_settings(cfg: DictConfig) -> SpeedSettings:
    module = cfg.get("module") or {}
    return SpeedSettings(bool(cfg.get("compile", False)), module.get("compile_backend", "inductor"),
                         module.get("compile_mode"), bool(module.get("compile_freeze", True)))


def world_size(trainer_cfg) -> int:
    devices = trainer_cfg.get("devices")
    world = devices if isinstance(devices, int) else len(devices) if OmegaConf.is_list(devices) else 1
    return world * int(trainer_cfg.get("num_nodes") or 1)


def baseline_ranks(cfg: DictConfig):
    """The baseline row under trainer=ddp: the ranks a training run would have (Lightning Fabric starts them as
    the Trainer does, re-running this job), each generating its share of the images; None for one process."""
    t = cfg.trainer
    if world_size(t) <= 1 or not str(t.get("strategy") or "").startswith("ddp"):
        return None
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=t.get("accelerator") or "auto", devices=t.devices, num_nodes=int(t.get("num_nodes") or 1),
                    strategy="ddp", precision="32-true")
    fabric.launch()
    if fabric.global_rank == 0:
        log.info("baseline row on %d ranks: each generates its share of the images, rank 0 scores and writes",
                 fabric.world_size)
    return fabric


def evaluate_baseline(cfg: DictConfig, run_dir: Path, concept: Concept, source: ModelSource, method: Method,
                      evaluator: Evaluator, plan: dict | None = None) -> Path:
    """The "SD" row: the untouched model, the initializer word in place of the token, same prompts and seeds.

    Scored under every protocol a trained run uses (light, then full): each row is compared with a
    trained run's evaluation of the same protocol; the images of each protocol are cached apart."""
    from textinv.models.generation import ImageGenerator

    fabric = baseline_ranks(cfg)  # trainer=ddp: every rank generates its share, rank 0 scores and writes
    first = fabric is None or fabric.global_rank == 0
    frozen = source.load().to(fabric.device if fabric is not None else evaluator.device)
    apply_speed(frozen, speed_settings(cfg))  # compile=true: the same faster frozen model as a trained run samples with
    meter = CostMeter(plan)
    meter.start(frozen.unet)
    word = str(cfg.init)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c] if first else []
    recorder = EvaluationRecorder(evaluator, run_dir, {**run_header(cfg, concept, source, method),
                                                       "settings": evaluator.settings(), "cost": {"plan": plan}})
    fingerprint = source.fingerprint()
    with baseline_signals(run_dir):
        for step, protocols in evaluation_schedule(evaluator.cfg, 0, baseline=True):
            for protocol in protocols:
                with meter.phase("eval"):
                    generator = ImageGenerator.from_frozen(frozen, scheduler=protocol.scheduler)
                    recorder.record(loggers, generator, step, protocol, word, "baseline", baseline=True,
                                    cache_key=baseline_cache_key(fingerprint, word, evaluator, protocol))
    if not first:
        return run_dir
    cost = meter.summary()
    recorder.write({"cost": cost})
    for lg in loggers:
        lg.log_metrics({f"cost/{k}": float(v) for k, v in cost["spent"].items()}, step=0)
        lg.finalize("success")
    atomic_write_text(finished_marker(run_dir), json.dumps({"finished": True, "baseline": True, "step": 0,
                                                             "word": word, "model": source.name, "cost": cost},
                                                            indent=2))
    return run_dir


def build_trainer(cfg: DictConfig) -> L.Trainer:
    from lightning.pytorch.callbacks import ProgressBar

    from textinv.training.progress import StepProgressBar

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(StepProgressBar())  # Lightning's default would read "Epoch 0/-2" (max_epochs=-1)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


def check_run_values(cfg: DictConfig) -> None:
    """Checks across keys that training makes before any file is read (train and plan=true share them)."""
    if cfg.baseline and not cfg.eval.enabled:
        raise UserError("baseline=true only evaluates, but eval.enabled=false; drop one of them")


def check_plan(cfg: DictConfig) -> None:
    """plan=true refuses what training would refuse (the same checks as `prepare`), writing and loading nothing
    big. What this machine lacks (the concept folder, the model's files) is not the plan's business: such checks
    are skipped with a warning naming them, so a plan can be made for another machine."""
    check_numbers(cfg)
    check_run_values(cfg)
    concept: Concept = instantiate(cfg.concept, _convert_="all")
    source: ModelSource = instantiate(cfg.model)
    datamodule: ConceptDataModule = instantiate(cfg.data, _partial_=True, _convert_="all")(concept=concept)
    train_prompts = []
    if concept.should_synthesize:  # drawn at training time; a plan writes nothing
        pass
    elif not concept.folder.exists():
        log.warning("plan: concept folder %s does not exist here; training would refuse until it holds 3-8 images",
                    concept.folder)
    else:
        datamodule.load()  # an empty folder, only hidden files, unreadable images, a bad caption: refused as in training
        if not cfg.baseline:
            train_prompts = datamodule.dataset(1).all_prompts()
    try:
        info = source.info()
        tokenizer = source.load_tokenizer()
    except UserError as err:
        log.warning("plan: the model's limits (resolution, prediction type, vocabulary) are not checked: %s", err)
        return
    checked_method(cfg, concept, source, info, tokenizer, train_prompts)


def print_plan(cfg: DictConfig) -> dict:
    """plan=true: the run's plan as one JSON line on stdout; the same checks as training (check_plan), no weights."""
    check_plan(cfg)
    plan = make_plan(cfg)
    print(json.dumps(plan), flush=True)
    return plan


def train(cfg: DictConfig, skip_finished: bool | None = None) -> Path:
    """skip_finished (default: inside a Hydra multirun): a finished run dir is skipped, not refused, so re-running
    an interrupted sweep redoes only the unfinished points."""
    if skip_finished is None:
        skip_finished = in_multirun()
    if skip_finished and finished_marker(cfg.run_dir).exists():
        log.info("skipping finished point %s (%s exists)", cfg.run_dir, FINISHED_MARKER)
        return Path(cfg.run_dir)
    with folder_lock(cfg.run_dir):  # a second process on this folder refuses instead of interleaving
        return _train(cfg)


def _train(cfg: DictConfig) -> Path:
    run_dir, ckpt_path, concept, source, datamodule, method = prepare(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    plan = make_plan(cfg)
    log.info("plan: %d training micro-steps (%d UNet forwards); %d evaluations, %d images, %d UNet forwards; "
             "validation loss %d UNet forwards (plan=true prints it as JSON)", plan["train_micro_steps"],
             plan["train_unet_forwards"], len(plan["evaluations"]), plan["eval_images"], plan["eval_unet_forwards"],
             plan["validation_unet_forwards"])
    log.info("plan (per evaluation): %s", json.dumps(plan["evaluations"]))
    evaluator = build_evaluator(cfg, concept, datamodule)
    config = config_file(run_dir)
    if not config.exists():
        atomic_write_text(config, OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.baseline:
        if evaluator is None:
            raise UserError("baseline=true only evaluates, but eval.enabled=false; drop one of them")
        return evaluate_baseline(cfg, run_dir, concept, source, method, evaluator, plan)
    frozen = source.load()
    module = instantiate(cfg.module, _convert_="all")(frozen=frozen, method=method, seed=cfg.seed)
    module.identity = identity(cfg, concept, source, method, datamodule)  # saved in every checkpoint (textinv.training.resume)
    trainer = build_trainer(cfg)
    graceful = GracefulStop()
    meter = CostMeter(plan)
    trainer.callbacks.insert(0, meter)  # first: its UNet hook counts every other callback's forwards
    trainer.callbacks.insert(0, FinishCompletedTraining())  # before the meter's and run.json's on_fit_end
    trainer.callbacks.append(graceful)
    for cb in trainer.callbacks:
        if isinstance(cb, ValidationLoss):
            cb.meter = meter
    if evaluator is not None or cfg.eval.enabled:
        # last in the list: MethodFileWriter writes the method's files first (on_train_end), so a failing final
        # evaluation loses nothing; it writes run.json after the evaluation (on_fit_end)
        trainer.callbacks.append(EvaluationCallback(evaluator.cfg if evaluator else instantiate(cfg.eval, _convert_="all"),
                                                    evaluator, run_dir,
                                                    {**run_header(cfg, concept, source, method), "cost": {"plan": plan}},
                                                    meter=meter))
    with confined(run_dir, cfg.eval.get("baseline_cache"), cache_dir("")):  # no write outside the run folder
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except FinalEvaluationStopped as stop:
            raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} during the final evaluation at step "
                              f"{trainer.global_step}: training is complete and its files are written in {run_dir}, "
                              "but the run is not marked finished (no run.json); re-run the same command to run only "
                              "the final evaluation again", stop.signum) from None
    if graceful.signum is not None:
        raise Interrupted(f"stopped by {signal.Signals(graceful.signum).name} at step {trainer.global_step}; "
                          f"re-run the same command to resume from {last_checkpoint(run_dir)}", graceful.signum)
    return run_dir
