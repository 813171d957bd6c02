"""When a run evaluates and under which protocols: the one place the schedule is computed.

Two protocols: `full` (the original one, eval.num_images/sampler_steps/scheduler) scores every run's final
evaluation, the one tables read; `light` (eval.light) scores the evaluations during training and the final
step too, so that a steps curve has one protocol throughout. Seeds, guidance and prompts are shared.

The schedule: steps in eval.at_steps or multiples of eval.every_n_steps during training (light protocol,
or full when eval.light is off); at the last step (max_steps, or an early stop) light then full, when
eval.at_end or the step is due anyway. A baseline run evaluates once, at step 0, as a last step.
The training callback (textinv.evaluation.callback) asks `protocols_at` step by step; the plan
(textinv.evaluation.plan) lists `evaluation_schedule` ahead; both read the same rules here.
`ev` below is an eval config (textinv.evaluation.evaluator.EvalConfig, which imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass

FULL, LIGHT = "full", "light"


@dataclass(frozen=True)
class Protocol:
    """What one evaluation generates: images per prompt, sampler and its steps (seeds/guidance are shared)."""

    name: str  # FULL | LIGHT
    num_images: int
    sampler_steps: int
    scheduler: str


def protocol_of(evaluation: dict) -> str:
    """An evaluation record's protocol; records written before protocols existed used the full one."""
    return str(evaluation.get("protocol") or FULL)


def protocols(ev, final: bool) -> list[Protocol]:
    """Protocols of one evaluation: during training light (else full); the final step light (for the
    steps curve) and then full (for the table)."""
    light = ev.light_protocol
    if light is None:
        return [ev.full]
    return [light, ev.full] if final else [light]


def due(ev, step: int) -> bool:
    """A step evaluated during training: in eval.at_steps, or a positive multiple of eval.every_n_steps."""
    return step in ev.at_steps or (ev.every_n_steps > 0 and step > 0 and step % ev.every_n_steps == 0)


def protocols_at(ev, step: int, final: bool) -> list[Protocol]:
    """What to evaluate at `step` ([] for nothing); `final`: the run's last step."""
    if not ev.enabled:
        return []
    if final:
        return protocols(ev, final=True) if ev.at_end or due(ev, step) else []
    return protocols(ev, final=False) if due(ev, step) else []


def evaluation_schedule(ev, steps: int, baseline: bool = False) -> list[tuple[int, list[Protocol]]]:
    """(step, protocols) of every evaluation a run of `steps` steps makes, in order."""
    if not ev.enabled:
        return []
    if baseline:  # its one evaluation, whatever eval.at_end says: the baseline run is nothing else
        return [(0, protocols(ev, final=True))]
    during = {s for s in ev.at_steps if s < steps}
    if ev.every_n_steps > 0:
        during |= set(range(ev.every_n_steps, steps, ev.every_n_steps))
    out = [(step, protocols_at(ev, step, final=False)) for step in sorted(during)]
    out.append((steps, protocols_at(ev, steps, final=True)))
    return [(step, ps) for step, ps in out if ps]
