"""`compile=true`: the frozen model made faster without changing what it computes (beyond float rounding).

Three things, applied in place to a loaded FrozenSD (training, its evaluations, the baseline row):
- **Fastest attention**: every UNet attention on `F.scaled_dot_product_attention` (diffusers' AttnProcessor2_0:
  FlashAttention / memory-efficient kernels on CUDA in half precision, the fused CPU kernel otherwise) and the
  text encoders on transformers' `sdpa` implementation.
- **Channels-last** memory layout of the UNet's and VAE's convolution weights (cuDNN and oneDNN pick NHWC kernels).
- **torch.compile** of the frozen UNet's and text encoders' `forward` and the VAE's `decode` (hooks of the modules
  themselves stay outside the compiled region: the cost meter's UNet counter keeps counting; hooks inside, e.g. a hypernetwork's,
  are traced). `dynamic=False`: one specialised graph per input shape (a training batch, an evaluation batch,
  the validation-loss chunk); the compile happens lazily, at the first call of each shape.
- **Frozen weights as constants in sampling graphs** (inductor's `freezing`, only for graphs compiled without
  gradients: evaluation, the validation loss, the baseline row): weights are folded in and pre-packed for the
  convolution kernels, which on a CPU is what makes compiled sampling faster than eager (README, Speed). Never
  for a module the method trains inside (`Method.trains_inside`: textual inversion's rows in the text encoders,
  a hypernetwork's modules in the UNet): their sampling graphs would keep the weights of their first call.
  It costs a second, packed copy of those weights in memory.

Numerics: compiled kernels reorder float operations, so results differ from eager by rounding only
(tests/test_speed.py states and checks the tolerances); a given setting stays deterministic on CPU (the same
generated code runs in the same order). The backend is `inductor` (needs a C++ compiler on CPU, Triton on
GPU); `aot_eager` traces the same graphs without generating code (tests: seconds instead of minutes).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

BACKENDS = ("inductor", "aot_eager", "eager")
RECOMPILE_LIMIT = 64  # shapes per compiled forward: training, evaluation batches, validation chunks


@dataclass
class SpeedSettings:
    compile: bool = False
    backend: str = "inductor"
    mode: str | None = None  # torch.compile mode (None: default; "max-autotune-no-cudagraphs" on a GPU)
    freeze: bool = True  # sampling graphs hold the frozen weights as constants (inductor only; see above)
    applied: list[str] = field(default_factory=list)  # what was done, for the log and run.json


def fastest_attention(frozen) -> str:
    """Every attention on SDPA; returns what the attentions now use."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        frozen.unet.set_attn_processor(AttnProcessor2_0())
        for encoder in frozen.text_encoders:
            if getattr(encoder.config, "_attn_implementation", None) != "sdpa":
                try:
                    encoder.config._attn_implementation = "sdpa"  # transformers >= 4.48 dispatches per call
                except Exception:  # noqa: BLE001 - an older transformers keeps its own implementation
                    pass
        if frozen.vae is not None:
            try:
                frozen.vae.set_attn_processor(AttnProcessor2_0())
            except Exception:  # noqa: BLE001
                pass
        return "sdpa"
    return "eager"


def channels_last(frozen) -> None:
    for module in (frozen.unet, frozen.vae):
        if module is not None:
            module.to(memory_format=torch.channels_last)


def _compile_method(module, backend: str, mode: str | None, freeze: bool = False, name: str = "forward") -> None:
    flag = f"_textinv_compiled_{name}"
    if getattr(module, flag, False):
        return
    compiled = torch.compile(getattr(module, name), backend=backend, mode=mode, dynamic=False)
    if backend == "inductor":
        import torch._inductor.config as inductor_config

        def call(*args, **kwargs):
            # Inductor reads `freezing` as it compiles, lazily inside this call, and applies it only to graphs
            # compiled with gradients off (training graphs stay as they are). Set per call and per module: the
            # setting is process-wide, and torch.compile(options={"freezing": ...}) does not reach that check
            # (tests/test_speed.py: an untrained module's sampling follows its weights).
            with inductor_config.patch(freezing=freeze):
                return compiled(*args, **kwargs)

        setattr(module, name, call)
    else:
        setattr(module, name, compiled)
    setattr(module, flag, True)


PARTS = ("unet", "text_encoders", "vae")  # what compile=true compiles; `Method.trains_inside` names them too


def compiled_methods(frozen) -> dict[str, list[tuple[torch.nn.Module, str]]]:
    """Per part, the (module, method name) pairs compiled: the VAE's decoder only (every evaluation image; its
    encoder runs once, for the latent cache)."""
    return {"unet": [(frozen.unet, "forward")], "text_encoders": [(e, "forward") for e in frozen.text_encoders],
            "vae": [(frozen.vae, "decode")] if frozen.vae is not None else []}


def frozen_parts(settings: SpeedSettings, trains_inside: frozenset[str] = frozenset()) -> list[str]:
    """The compiled parts whose sampling graphs may hold their weights as constants: those the method does not
    train inside, with the inductor backend and `settings.freeze`."""
    if not (settings.freeze and settings.backend == "inductor"):
        return []
    return [part for part in PARTS if part not in trains_inside]


def apply_speed(frozen, settings: SpeedSettings, trains_inside: frozenset[str] = frozenset()) -> SpeedSettings:
    """compile=true on a loaded (and already cast/moved) frozen model; a no-op when settings.compile is false.
    trains_inside: the parts the attached method trains inside (`Method.trains_inside`)."""
    if not settings.compile:
        return settings
    import torch._dynamo

    if settings.backend not in BACKENDS:
        from textinv.errors import UserError

        raise UserError(f"module.compile_backend={settings.backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(RECOMPILE_LIMIT, getattr(torch._dynamo.config, name)))
    settings.applied = [f"attention={fastest_attention(frozen)}"]
    channels_last(frozen)
    settings.applied.append("channels_last")
    constant = frozen_parts(settings, trains_inside)
    for part, targets in compiled_methods(frozen).items():
        for module, name in targets:
            _compile_method(module, settings.backend, settings.mode, part in constant, name)
    settings.applied.append(f"torch.compile(unet, text encoders, VAE decoder; backend={settings.backend}, "
                            f"mode={settings.mode or 'default'})")
    if constant:
        settings.applied.append(f"sampling graphs with constant weights: {', '.join(constant)}")
    log.info("compile=true: %s", "; ".join(settings.applied))
    return settings


def time_compile(step, sync=None, eager_repeats: int = 2, compiled_repeats: int = 3) -> dict:
    """Compile time and break-even of `step` (a callable: one training micro-step's forward and backward, under
    the compiled model), all on the same work: `eager_repeats` eager calls (the last is the eager time), then
    compiled calls: the first holds the compile of the forward and backward graphs, the median of the rest is the
    compiled time. compile_s = first compiled - compiled; break-even micro-step = compile_s / (eager - compiled)."""

    def timed() -> float:
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        step()
        if sync is not None:
            sync()
        return time.perf_counter() - t0

    with torch.compiler.set_stance("force_eager"):
        eager = [timed() for _ in range(eager_repeats)]
    compiled = [timed() for _ in range(compiled_repeats)]
    rest = sorted(compiled[1:])
    return break_even(compiled[0], rest[len(rest) // 2] if rest else compiled[0], eager[-1])


def break_even(first_s: float, compiled_s: float, eager_s: float | None) -> dict:
    """What compiling cost and when it pays: the first compiled step holds the compile."""
    compile_s = max(0.0, first_s - compiled_s)
    out = {"compile_s": round(compile_s, 3), "compiled_step_s": round(compiled_s, 4),
           "eager_step_s": None if eager_s is None else round(eager_s, 4), "speedup": None,
           "break_even_micro_step": None}
    if eager_s is not None and compiled_s > 0:
        out["speedup"] = round(eager_s / compiled_s, 3)
        gain = eager_s - compiled_s
        out["break_even_micro_step"] = int(-(-compile_s // gain)) if gain > 0 else None  # None: never pays off
    return out


def describe(report: dict) -> str:
    if report.get("eager_step_s") is None:
        return f"compile took {report['compile_s']:.1f} s; compiled micro-step {report['compiled_step_s']:.3f} s"
    pays = (f"pays off after micro-step {report['break_even_micro_step']}" if report["break_even_micro_step"]
            else "never pays off at this size (the compiled step is not faster)")
    return (f"compile took {report['compile_s']:.1f} s; micro-step eager {report['eager_step_s']:.3f} s vs compiled "
            f"{report['compiled_step_s']:.3f} s ({report['speedup']:.2f}x); {pays}")
