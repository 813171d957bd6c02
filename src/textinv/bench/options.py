"""Per-step cost of the training options of issue 20: masks (data.masked), norm rescale, L2 pull.

One process, one model, one batch stream: the variants take turns (plain, masked, rescale, pull, plain, ...) for
`--rounds` rounds of `--steps` steps each, so machine load drifting over the run hits every variant alike.
Each step is what Lightning's step does for these options: loss (+ the method's regularisation), backward,
AdamW, the method's after_step. Reports seconds per step (median over rounds) and each variant's cost
relative to plain. The toy world's model by default (CPU, seconds); any `model=` choice works.

Usage: python -m textinv.bench.options [--model toy] [--concept toy_heart] [--rounds 8] [--steps 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

VARIANTS = ("plain", "masked", "rescale", "pull")


def build(model: str, concept: str, batch_size: int):
    from hydra.utils import instantiate

    from textinv.bench.main import _compose

    cfg = _compose(f"model={model}", f"concept={concept}", "data.masked=true", f"data.batch_size={batch_size}",
                   "data.resolution=${model.resolution}")
    concept_obj = instantiate(cfg.concept, _convert_="all")
    dm = instantiate(cfg.data, _partial_=True, _convert_="all")(concept=concept_obj)
    dm.load()
    frozen = instantiate(cfg.model).load()
    method = instantiate(cfg.method, _convert_="all")(word=concept_obj.placeholder, initializer=concept_obj.initializer)
    module = instantiate(cfg.module, _convert_="all")(frozen=frozen, method=method)
    module.build_latent_cache(dm.pixel_tensor(), masks=dm.mask_tensor())
    return module, method, dm


def set_variant(module, method, masking, variant: str, pull: float) -> None:
    module.masking = masking if variant == "masked" else None
    method.norm_rescale = variant == "rescale"
    method.init_pull = pull if variant == "pull" else 0.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m textinv.bench.options", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="toy")
    p.add_argument("--concept", default="toy_heart")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    p.add_argument("--pull", type=float, default=0.1, help="init_pull weight while timing 'pull'")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    module, method, dm = build(args.model, args.concept, args.batch_size)
    masking = dm.masking
    loader = torch.utils.data.DataLoader(dm.dataset(10**6), batch_size=args.batch_size)
    batches = iter(loader)
    opt = torch.optim.AdamW(list(method.parameters()), lr=1e-3)

    def step() -> None:
        batch = next(batches)
        loss = module.loss(batch)
        reg = method.regularization()
        if reg is not None:
            loss = loss + reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step()

    for v in VARIANTS:  # warm-up: one step of each (allocator, first-call costs)
        set_variant(module, method, masking, v, args.pull)
        step()
    load_start = os.getloadavg()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}  # this process's CPU time: robust to a loaded machine
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # alternate the order too
        for v in order:
            set_variant(module, method, masking, v, args.pull)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            times[v].append((time.perf_counter() - t0) / args.steps)
            cpu[v].append((time.process_time() - c0) / args.steps)

    def summary(values: dict[str, list[float]]) -> dict:
        plain = statistics.median(values["plain"])
        return {"s_per_step": {v: statistics.median(t) for v, t in values.items()},
                "relative_to_plain": {v: statistics.median(t) / plain for v, t in values.items()},
                # paired per round: each variant's round over the plain round of the same round
                "paired_ratio_median": {v: statistics.median(a / b for a, b in zip(values[v], values["plain"]))
                                        for v in VARIANTS}}

    result = {"model": args.model, "batch_size": args.batch_size, "rounds": args.rounds, "steps": args.steps,
              "pull": args.pull, "loadavg_start": load_start, "torch_threads": torch.get_num_threads(),
              "cpu": summary(cpu), "wall": summary(times), "all_cpu_s_per_step": cpu, "all_wall_s_per_step": times}
    result["loadavg_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("all_")}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
