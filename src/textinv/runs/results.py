"""Finished runs -> tables: read `eval/metrics.json` of many run directories and aggregate them.

Shared by `experiments/table.py` (the study's Table 1: rows SD and SD + TI, written by textinv.runs.report) and
`experiments/figures.py`, and meant for later sweep tables too: `aggregate(runs, key=...)` groups by any function of a run, and
`RunResult.get("lr")` / `RunResult.get("module.optim.schedule")` read the metrics header first and the
run's resolved `config.yaml` second.

A run directory is any folder holding `eval/metrics.json` (written by every training run that
evaluates, and by `baseline=true` runs); `run.json` beside it marks the run finished. Each run
contributes its **final full-protocol** evaluation (the last record with protocol "full"; records
from before protocols existed count as full); light-protocol evaluations only make steps curves, one
protocol per curve (`curve_protocol`). Mean and spread are over runs: the mean, and the sample standard
deviation (n - 1 in the denominator), of the per-run finals.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from textinv.errors import UserError
from textinv.evaluation.schedule import FULL, LIGHT, protocol_of
from textinv.runs.layout import (FINISHED_MARKER, METRICS_FILE, METRICS_PATH, PROMPTS_FILE, config_file, eval_images_dir,
                                 finished_marker, image_folder_name, metrics_file, parse_image_folder_name,
                                 prompt_images)

log = logging.getLogger(__name__)

BASELINE_ROW, TI_ROW, HN_ROW = "SD", "SD + TI", "SD + HN"
ROW_ORDER = (BASELINE_ROW, TI_ROW, HN_ROW)

# The study's Table 1 (CLIP-based, higher is better for both).
STUDY_TABLE = {
    BASELINE_ROW: {"reconstruction": 0.7622, "editability": 0.2639},
    TI_ROW: {"reconstruction": 0.8077, "editability": 0.1611},
}

# Table column -> key in an evaluation record of metrics.json.
TABLE_METRICS = {"reconstruction": "reconstruction", "editability": "editability", "fid": "fid",
                 "kid": "kid_mean", "is": "is_mean"}
METRIC_LABELS = {"reconstruction": "Reconstruction", "editability": "Editability", "fid": "FID", "kid": "KID",
                 "is": "IS"}
# Settings that must agree for runs to be compared in one table.
COMPARABLE_SETTINGS = ("num_images", "sampler_steps", "guidance_scale", "scheduler", "seed", "negative_prompt",
                       "resolution", "clip", "clip_t_text", "fid", "reconstruction_prompt")


def curve_protocol(runs: Sequence["RunResult"]) -> str:
    """The one protocol a steps curve over `runs` uses: light where every run has it, else full."""
    return LIGHT if runs and all(r.has_protocol(LIGHT) for r in runs) else FULL


def read_json(path: Path, missing: str, fix: str = ""):
    """A JSON file of a run; a missing or unreadable one is a UserError (`missing`, or invalid JSON + `fix`)."""
    from textinv.validation import check_file_size

    check_file_size(path, "run file", "leave the run out")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}){fix}") from None


@dataclass
class RunResult:
    run_dir: Path
    header: dict  # concept, kind, placeholder, initializer, baseline, model, seed, lr, steps, num_vectors, settings
    evaluations: list[dict]
    finished: bool
    _config: dict | None = field(default=None, repr=False)

    @property
    def baseline(self) -> bool:
        return bool(self.header.get("baseline"))

    @property
    def row(self) -> str:
        """The table row: the untouched model, or the method that trained (runs before methods: TI)."""
        return BASELINE_ROW if self.baseline else str(self.header.get("row") or TI_ROW)

    def has_protocol(self, protocol: str) -> bool:
        return any(protocol_of(e) == protocol for e in self.evaluations)

    def curve(self, protocol: str) -> list[dict]:
        """The evaluations of one protocol, in step order (a steps curve)."""
        return [e for e in self.evaluations if protocol_of(e) == protocol]

    @property
    def final(self) -> dict:
        """The last full-protocol evaluation: what tables read."""
        full = self.curve(FULL)
        if not full:
            raise UserError(f"{metrics_file(self.run_dir)} has no full-protocol evaluation yet (only light ones "
                            "during training); let the run finish or leave it out")
        return full[-1]

    @property
    def concept(self) -> str:
        return str(self.header.get("concept"))

    @property
    def seed(self):
        return self.header.get("seed")

    @property
    def model(self) -> str:
        return str(self.header.get("model"))

    @property
    def model_id(self) -> str:
        """Name and location: two model folders can share a name (`model=sd15 model.path=...`)."""
        where = self.header.get("model_location") or self.get("model.path") or self.get("model.hub_id")
        return f"{self.model} ({where})" if where and str(where) != self.model else self.model

    @property
    def weights(self) -> str | None:
        """The model weights' fingerprint recorded by the run (None for runs written before it was recorded)."""
        fp = self.header.get("model_fingerprint")
        return str(fp) if fp else None

    @property
    def family(self) -> str:
        """The model family (sd: SD 1.x/2.x, sdxl); runs written before families existed are SD 1.x/2.x."""
        return str(self.header.get("family") or "sd")

    @property
    def settings(self) -> dict:
        return self.header.get("settings") or {}

    @property
    def word(self) -> str:
        """What stands in for {} in the prompts: the initializer word (baseline), else the method's word (the
        learned token; a hypernetwork's initializer word)."""
        if self.baseline:
            return str(self.header.get("initializer"))
        return str(self.header.get("word") or self.header.get("placeholder"))

    def value(self, key: str, evaluation: dict | None = None) -> float | None:
        """A finite number from an evaluation record (the final one by default), else None; numbers stored as
        strings ("0.42", as some tools rewrite JSON) are read as numbers."""
        return finite_number((self.final if evaluation is None else evaluation).get(key))

    @property
    def config(self) -> dict:
        if self._config is None:
            path = config_file(self.run_dir)
            if path.is_file():
                from omegaconf import OmegaConf

                self._config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            else:
                self._config = {}
        return self._config

    def get(self, key: str, default=None):
        """A header field (`lr`, `seed`, `initializer`, ...), else a dotted key of the run's config.yaml."""
        if key in self.header:
            return self.header[key]
        node = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    # --- images --------------------------------------------------------------------------------
    def evaluation_at(self, step: int, protocol: str = FULL) -> dict | None:
        return next((e for e in self.evaluations if e.get("step") == step and protocol_of(e) == protocol), None)

    def image_steps(self, protocol: str = FULL) -> list[int]:
        """Training steps with an image folder of `protocol` (eval/images/stepNNNNNN[-light]), ascending."""
        root = eval_images_dir(self.run_dir)
        steps = [parse_image_folder_name(d.name, protocol) for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
        return sorted(s for s in steps if s is not None)

    def images_dir(self, step: int | None = None, protocol: str = FULL) -> Path:
        """The baseline's image folder, or a TI run's folder of `step` (default: its final evaluation)."""
        root = eval_images_dir(self.run_dir)
        if self.baseline:
            return root / image_folder_name(None, protocol)
        if step is None:
            last = self.curve(protocol)
            step = last[-1].get("step") if last else None
            if (step is None or not (root / image_folder_name(step, protocol)).is_dir()) and self.image_steps(protocol):
                step = self.image_steps(protocol)[-1]
            if step is None:
                raise UserError(f"{self.run_dir} has no {protocol}-protocol evaluation images")
        return root / image_folder_name(step, protocol)

    def templates(self, folder: Path) -> list[str]:
        """The prompt templates of an image folder (prompts.json; p00 = the reconstruction prompt)."""
        path = folder / PROMPTS_FILE
        templates = read_json(path, missing=f"{folder} has no prompts.json; is it an eval/images folder of a run?")
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise UserError(f"{path} should be a list of prompt templates")
        return templates

    def prompt_text(self, p: int, template: str, evaluation: dict | None = None) -> str:
        """Prompt p as generated (from metrics.json where recorded, else the template with the run's word)."""
        per_prompt = (evaluation or self.final).get("per_prompt") or []
        if p < len(per_prompt) and per_prompt[p].get("template") == template and per_prompt[p].get("prompt"):
            return str(per_prompt[p]["prompt"])
        return template.replace("{}", self.word)

    @staticmethod
    def image_files(folder: Path, p: int) -> list[Path]:
        """Images of prompt p in a folder, in seed order (pNN-KKK.png, image k from seed eval.seed + k)."""
        return prompt_images(folder, p)


def finite_number(v) -> float | None:
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path is a run directory or a folder (a Hydra multirun/sweep) holding run directories below it."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"{raw}: no such file or directory; give run directories or a sweep folder")
        if not path.is_dir():
            raise UserError(f"{raw} is not a directory; give run directories (holding {METRICS_PATH}) or a sweep folder")
        if metrics_file(path).is_file():
            hits = [path]
        else:
            hits = sorted(m.parent.parent for m in path.rglob(METRICS_FILE) if m == metrics_file(m.parent.parent)
                          and m.is_file())
        if not hits:
            raise UserError(f"{raw} holds no run with {METRICS_PATH} (runs need evaluation on: not eval=off); "
                            "give a run directory or a sweep folder")
        for hit in hits:
            found.setdefault(hit.resolve(), None)
    return list(found)


def load_run(run_dir: str | Path) -> RunResult:
    run_dir = Path(run_dir)
    path = metrics_file(run_dir)
    data = read_json(path, missing=f"{run_dir} has no {METRICS_PATH}; was it run with evaluation on?",
                     fix="; re-run its evaluation or leave the run out")
    if not isinstance(data, dict):
        raise UserError(f"{path} is malformed: a {type(data).__name__}, not an object with evaluations; "
                        "re-run its evaluation or leave the run out")
    evaluations = data.get("evaluations")
    if not evaluations:
        raise UserError(f"{path} holds no evaluation yet; let the run reach its first evaluation or leave it out")
    if not isinstance(evaluations, list) or not all(
            isinstance(e, dict) and isinstance(e.get("step"), int) and not isinstance(e.get("step"), bool)
            and isinstance(e.get("per_prompt", []), list) for e in evaluations):
        raise UserError(f"{path} is malformed: evaluations must be a list of records with a whole-number step; "
                        "re-run its evaluation or leave the run out")
    header = {k: v for k, v in data.items() if k not in ("evaluations", "final")}
    if not isinstance(header.get("settings", {}), dict):
        raise UserError(f"{path} is malformed: settings is not an object; re-run its evaluation or leave the run out")
    return RunResult(run_dir, header, evaluations, finished_marker(run_dir).is_file())


class Runs(list):
    """load_runs' answer: the runs, and `notes`: what the reader left out and why (tables print them)."""

    notes: list[str]


def load_runs(paths: Iterable[str | Path], include_unfinished: bool = False) -> list[RunResult]:
    """Every run below `paths`; unfinished ones (no run.json) are left out with a warning unless asked for; runs that
    cannot be compared with the others are left out or refused (`matched_concepts`)."""
    runs = [load_run(d) for d in find_run_dirs(paths)]
    light_only = [r for r in runs if not r.has_protocol(FULL)]
    if light_only:  # tables read full-protocol final evaluations only
        log.warning("leaving out %d run(s) without a full-protocol evaluation (only light ones during training): %s",
                    len(light_only), ", ".join(str(r.run_dir) for r in light_only[:5]))
        runs = [r for r in runs if r.has_protocol(FULL)]
    unfinished = [r for r in runs if not r.finished]
    if unfinished and not include_unfinished:
        log.warning("leaving out %d unfinished run(s) (no %s; --include-unfinished uses their latest evaluation): %s",
                    len(unfinished), FINISHED_MARKER, ", ".join(str(r.run_dir) for r in unfinished[:5]))
        runs = [r for r in runs if r.finished]
    if not runs:
        raise UserError("no finished runs with a full-protocol evaluation to tabulate (run.json missing, or only "
                        "light evaluations so far); wait for them or pass --include-unfinished")
    kept, notes = matched_concepts(runs)
    for note in notes:
        log.warning(note)
    out = Runs(kept)
    out.notes = notes
    return out


def model_key(run: RunResult, runs: Sequence[RunResult]) -> str:
    """The model a run used, as rows tell models apart: family, name and location, and the weights' fingerprint
    where runs of one name and location used different weights (a folder retrained in place)."""
    same = {r.weights for r in runs if r.model_id == run.model_id and r.family == run.family}
    weights = f" weights {run.weights[:8]}" if len(same) > 1 and run.weights else ""
    return f"{run.model_id}{weights}"


def matched_concepts(runs: Sequence[RunResult]) -> tuple[list[RunResult], list[str]]:
    """Per model, the SD row (baseline runs) and the trained rows must be of the same concepts: a trained run of a
    concept no baseline run has (or the reverse) is left out with a note; nothing comparable left is refused."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in runs:
        groups.setdefault((r.family, model_key(r, runs)), []).append(r)
    kept, notes = [], []
    for (_, model), members in groups.items():
        base = {r.concept for r in members if r.baseline}
        trained = {r.concept for r in members if not r.baseline}
        if not base or not trained or base == trained:
            kept += members
            continue
        both = base & trained
        if not both:
            raise UserError(f"the {BASELINE_ROW} row's runs are of concept(s) {', '.join(sorted(base))} and the trained "
                            f"runs of {', '.join(sorted(trained))} (model {model}): rows of different concepts cannot "
                            "be compared; give the baseline=true and trained runs of the same concepts")
        left = [r for r in members if r.concept not in both]
        kept += [r for r in members if r.concept in both]
        notes.append(f"left out {len(left)} run(s) whose concept has no {'trained' if left[0].baseline else 'baseline'} "
                     f"run to compare with (model {model}): " + ", ".join(f"{r.run_dir} ({r.concept})" for r in left[:5]))
    return kept, notes


def non_finite_notes(runs: Sequence[RunResult], metrics: dict[str, str] = TABLE_METRICS) -> list[str]:
    """Runs whose final value of a metric is recorded but not a finite number: left out of that mean, said so."""
    notes = []
    for name, key in metrics.items():
        bad = [(r, r.final.get(key)) for r in runs if r.final.get(key) is not None and r.value(key) is None]
        if bad:
            notes.append(f"{METRIC_LABELS.get(name, name)}: left out of the mean for {len(bad)} run(s) whose value is "
                         "not a finite number: " + ", ".join(f"{r.run_dir} ({v!r})" for r, v in bad[:5]))
    return notes


# --- aggregation ---------------------------------------------------------------------------------
@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample standard deviation over runs (n - 1); None with fewer than two values
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> "Stat":
        vals = [v for v in values if v is not None]
        if not vals:
            return cls(None, None, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def row_key(run: RunResult) -> str:
    return run.row


FAMILY_LABELS = {"sd": "SD 1.x/2.x", "sdxl": "SDXL"}


def model_row_key(runs: Sequence[RunResult]) -> Callable[[RunResult], str]:
    """Rows per model when the runs use several: one row never mixes (or mislabels) two models; with SD 1.x/2.x
    and SDXL runs together, each row also names its family."""
    if len({r.family for r in runs}) > 1:
        return lambda r: f"{r.row} [{FAMILY_LABELS.get(r.family, r.family)}: {model_key(r, runs)}]"
    if len({model_key(r, runs) for r in runs}) <= 1:
        return row_key
    return lambda r: f"{r.row} [{model_key(r, runs)}]"


def check_one_family(label, members: Sequence[RunResult]) -> None:
    """A row averaging SD 1.x/2.x and SDXL runs would compare different models' scores as one: refused."""
    families = sorted({r.family for r in members})
    if len(families) > 1:
        raise UserError(f"row {label!r} would mix {' and '.join(FAMILY_LABELS.get(f, f) for f in families)} runs "
                        f"(e.g. {members[0].run_dir}); tabulate each model family separately or group by model")


def aggregate(runs: Sequence[RunResult], key: Callable[[RunResult], object] = row_key,
              metrics: dict[str, str] = TABLE_METRICS, order: Sequence = ROW_ORDER) -> list[dict]:
    """One dict per group: label, counts (runs, concepts, seeds, images), a `Stat` per metric, the runs."""
    groups: dict[object, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    labels = [k for k in order if k in groups] + sorted((k for k in groups if k not in order), key=str)
    rows = []
    for label in labels:
        members = groups[label]
        check_one_family(label, members)
        rows.append({
            "label": label, "runs": members, "num_runs": len(members),
            "concepts": len({r.concept for r in members}), "seeds": len({r.seed for r in members}),
            "images": sum(int(r.final.get("num_images") or 0) for r in members),
            "stats": {name: Stat.of([r.value(k) for r in members]) for name, k in metrics.items()},
        })
    return rows


def comparability_warnings(runs: Sequence[RunResult]) -> list[str]:
    """Settings that differ between runs (their figures are then not comparable in one table)."""
    out = list(getattr(runs, "notes", [])) + non_finite_notes(runs)
    models = sorted({model_key(r, runs) for r in runs})
    if len(models) > 1:
        out.append(f"runs use different models (one row per model): {', '.join(models)}")
    families = sorted({r.family for r in runs})
    if len(families) > 1:
        out.append(f"runs mix model families ({', '.join(FAMILY_LABELS.get(f, f) for f in families)}): each row holds "
                   "one family's runs, never averaged together; their scores come from different models")
    for key in COMPARABLE_SETTINGS:
        values = {json.dumps(r.settings.get(key), sort_keys=True) for r in runs}
        if len(values) > 1:
            out.append(f"runs differ in eval setting {key}: {', '.join(sorted(values))}")
    return out
