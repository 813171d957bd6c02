"""`make gpu-check`: one prepared script for the first GPU this project gets (and, without one, a dry run on the CPU).

On a GPU (random weights of the real architectures, so nothing is downloaded):
- the training step, batch 1, bf16 frozen weights (trainer.precision=bf16-mixed; the trained vectors stay fp32):
  SD 1.5's architecture at 512 px and SDXL base 1.0's at 1024 px, eager and (SD 1.5; SDXL with --compile-sdxl)
  compile=true with its compile time (inductor) and break-even step; peak GPU memory of each;
- evaluation generation (DDIM, guidance 5, eval.batch_size images per call, bf16): images per second at
  --gen-steps sampler steps and projected to the full protocol's 50;
- diffusers' textual_inversion.py / textual_inversion_sdxl.py on the same weights when given
  (--peer-script-sd, --peer-script-sdxl; mixed precision bf16);
- a 2-rank DDP training step when two GPUs are visible;
- the estimated GPU-hours of the study: the plans (`train.py sweep=<name> plan=true`) of the Table 1 sweep and the
  three ablations (steps, initializer, seed), times the measured SD 1.5 rates (training micro-steps x s/step;
  each evaluation image its sampler steps x s per image-step + one decode; the validation loss in UNet forwards).
Without a GPU the same script runs on the tiny models (model=tiny for SD 1.5, model=sdxl_tiny for SDXL) at 32 px
on the CPU, in fp32 (compile=true with the aot_eager backend unless --compile-backend inductor), and says so: it
shows that every part runs, not how fast a GPU is (tests/test_gpu_check.py runs it that way).
Each measurement runs in its own process (`python -m textinv.bench --part ...`): its peak memory is its own.
Usage: python -m textinv.bench.gpu_check [--peer-script-sd F] [--peer-script-sdxl F] [--steps N] [--gen-steps N]
       [--compile-sdxl] [--no-compile] [--ddp-cpu] [--sweeps table,steps,init,seed] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
STUDY_SWEEPS = ("table", "steps", "init", "seed")  # Table 1 and the study's three ablations (sweeps/)


def targets(gpu: bool) -> list[dict]:
    if gpu:
        return [{"name": "SD 1.5", "model": "sd15_arch", "resolution": 512},
                {"name": "SDXL", "model": "sdxl_arch", "resolution": 1024}]
    return [{"name": "SD 1.5 (tiny stand-in)", "model": "tiny", "resolution": 32},
            {"name": "SDXL (tiny stand-in)", "model": "sdxl_tiny", "resolution": 32}]


def child(part: str, model: str, resolution: int, args, *extra: str, timeout: int = 900) -> dict:
    """One measurement in its own process; its JSON result (or {"error": ...})."""
    cmd = [sys.executable, "-m", "textinv.bench", "--part", part, "--model", model, "--resolution", str(resolution),
           "--steps", str(args.steps), "--device", args.device, "--gen-steps", str(args.gen_steps),
           "--gen-images", str(args.gen_images), "--gen-batch", str(args.gen_batch), "--precision", args.precision,
           *extra]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in out.stdout.strip().splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or [""])[-1][:300]
        return {"error": f"exit {out.returncode}: {tail}", "wall_s": round(wall, 1)}
    result = json.loads(lines[-1])
    result["wall_s"] = round(wall, 1)
    return result


def step_line(r: dict) -> str:
    if "error" in r:
        return f"FAILED ({r['error']})"
    med = statistics.median(r["seconds"])
    text = f"{med:.4f} s/step (steps {', '.join(f'{x:.3f}' for x in r['seconds'])}), peak {r['peak_memory_gb']:.2f} GiB"
    if r.get("compile"):
        c = r["compile"]
        text += f"; compile {c['compile_s']:.1f} s"
    return text


def gen_rates(g: dict) -> dict:
    per_image = g["seconds"]["batched"] / g["images"]
    decode = min(g["decode_s_per_image"]["batched"], per_image)
    per_step = (per_image - decode) / g["gen_steps"]
    return {"images_per_s": 1 / per_image, "s_per_image_step": per_step, "decode_s_per_image": decode,
            "images_per_s_at_50_steps": 1 / (per_step * 50 + decode)}


def study_plans(sweeps: list[str]) -> dict[str, list[dict]]:
    """`python train.py sweep=<name> plan=true`: one plan per point, no weights loaded."""
    plans = {}
    for name in sweeps:
        out = subprocess.run([sys.executable, str(ROOT / "train.py"), f"sweep={name}", "plan=true",
                              "hydra.sweep.dir=/tmp/textinv-gpu-check-plan"], capture_output=True, text=True,
                             cwd=ROOT, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode != 0:
            raise SystemExit(f"plan of sweep={name} failed: {out.stderr[-2000:]}")
        plans[name] = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    return plans


def gpu_hours(plans: dict[str, list[dict]], s_per_step: float, rates: dict) -> dict:
    from textinv.evaluation.plan import eval_compute_seconds

    out = {}
    for name, points in plans.items():
        train = sum(p["train_micro_steps"] * s_per_step for p in points)
        ev = sum(eval_compute_seconds(p, rates["s_per_image_step"], rates["decode_s_per_image"]) for p in points)
        out[name] = {"points": len(points), "train_h": round(train / 3600, 3), "eval_h": round(ev / 3600, 3),
                     "total_h": round((train + ev) / 3600, 3)}
    out["all"] = {"points": sum(v["points"] for v in out.values()),
                  **{k: round(sum(v[k] for v in out.values()), 3) for k in ("train_h", "eval_h", "total_h")}}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m textinv.bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed training steps per measurement (after a warm-up)")
    p.add_argument("--gen-steps", type=int, help="sampler steps of the generation measurement (GPU 20, CPU 2)")
    p.add_argument("--gen-images", type=int, help="images generated (default: eval.batch_size)")
    p.add_argument("--peer-script-sd", help="diffusers' examples/textual_inversion/textual_inversion.py")
    p.add_argument("--peer-script-sdxl", help="diffusers' examples/textual_inversion/textual_inversion_sdxl.py "
                   "(default: $TEXTINV_PEER_SCRIPT)")
    p.add_argument("--no-compile", action="store_true", help="skip the compile=true training step")
    p.add_argument("--compile-sdxl", action="store_true", help="also compile=true on SDXL (minutes of compile)")
    p.add_argument("--compile-backend", help="torch.compile backend (default: inductor on a GPU; aot_eager on the CPU, "
                   "where inductor's C++ compile of even the tiny models takes minutes)")
    p.add_argument("--ddp-cpu", action="store_true", help="without 2 GPUs: run the 2-rank DDP step on 2 CPU ranks")
    p.add_argument("--sweeps", default=",".join(STUDY_SWEEPS), help="the sweeps whose GPU-hours are estimated")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from textinv.evaluation.evaluator import EvalConfig

    gpu = torch.cuda.is_available()
    args.device = "cuda" if gpu else "cpu"
    args.precision = "bf16-mixed" if gpu else "32"
    args.compile_backend = args.compile_backend or ("inductor" if gpu else "aot_eager")
    args.gen_steps = args.gen_steps or (20 if gpu else 2)
    args.gen_batch = EvalConfig().batch_size
    args.gen_images = args.gen_images or args.gen_batch
    args.peer_script_sdxl = args.peer_script_sdxl or os.environ.get("TEXTINV_PEER_SCRIPT")
    started = time.perf_counter()
    report: dict = {"gpu": gpu, "device": torch.cuda.get_device_name(0) if gpu else "cpu",
                    "gpus": torch.cuda.device_count() if gpu else 0, "torch": torch.__version__,
                    "precision": args.precision, "load_avg_1min": round(os.getloadavg()[0], 2)}
    if gpu:
        print(f"gpu-check on {report['device']} ({report['gpus']} visible), torch {torch.__version__}, bf16 frozen "
              "weights (trainer.precision=bf16-mixed), random weights of the real architectures")
    else:
        print("gpu-check: NO GPU here: running the same script on the tiny models (model=tiny, model=sdxl_tiny) at "
              "32 px on the CPU, fp32, compile backend "
              f"{args.compile_backend}. The figures below are NOT GPU figures; they show that every part runs.")
    for t in targets(gpu):
        name, model, res = t["name"], t["model"], t["resolution"]
        entry: dict = {"model": model, "resolution": res}
        print(f"{name} ({model}, {res} px, batch 1):")
        entry["train"] = child("train", model, res, args)
        print(f"  training step, eager:        {step_line(entry['train'])}")
        sdxl = "sdxl" in model
        if not args.no_compile and (not sdxl or args.compile_sdxl):
            entry["train_compiled"] = child("train_compiled", model, res, args, "--compile-backend",
                                            args.compile_backend, timeout=1800)
            line = step_line(entry["train_compiled"])
            if "error" not in entry["train"] and "error" not in entry["train_compiled"]:
                e, c = (statistics.median(entry[k]["seconds"]) for k in ("train", "train_compiled"))
                gain = e - c
                comp = entry["train_compiled"]["compile"]["compile_s"] if entry["train_compiled"].get("compile") else 0
                entry["compile_speedup"] = round(e / c, 3)
                entry["break_even_step"] = int(-(-comp // gain)) if gain > 0 else None
                line += f"; {e / c:.2f}x eager, pays off after step {entry['break_even_step'] or 'never'}"
            print(f"  training step, compile=true: {line}")
        peer = args.peer_script_sdxl if sdxl else args.peer_script_sd
        if peer:
            entry["peer"] = child("peer", model, res, args, "--peer-script", peer, timeout=1800)
            line = step_line(entry["peer"])
            if "error" not in entry["peer"] and "error" not in entry["train"]:
                entry["speedup_vs_peer"] = round(statistics.median(entry["peer"]["seconds"])
                                                 / statistics.median(entry["train"]["seconds"]), 3)
                line += f"; textinv eager is {entry['speedup_vs_peer']:.2f}x faster"
            print(f"  diffusers' {Path(peer).name}: {line}")
        else:
            print(f"  diffusers' {'textual_inversion_sdxl.py' if sdxl else 'textual_inversion.py'}: not given "
                  f"(--peer-script-{'sdxl' if sdxl else 'sd'} PATH)")
        g = child("generate", model, res, args, "--gen-modes", "batched", *(["--gen-dtype", "bfloat16"] if gpu else []))
        entry["generate"] = g
        if "error" in g:
            print(f"  evaluation generation: FAILED ({g['error']})")
        else:
            rates = gen_rates(g)
            entry["generate_rates"] = {k: round(v, 5) for k, v in rates.items()}
            print(f"  evaluation generation (DDIM {args.gen_steps} steps, guidance 5, {args.gen_batch} per call): "
                  f"{rates['images_per_s']:.3f} images/s; projected to 50 steps {rates['images_per_s_at_50_steps']:.3f} "
                  f"images/s; peak {g['peak_memory_gb']:.2f} GiB")
        report[model] = entry
    # two ranks
    if (gpu and report["gpus"] >= 2) or (not gpu and args.ddp_cpu):
        t = targets(gpu)[0]
        r = child("train_ddp", t["model"], t["resolution"], args, timeout=1800)
        report["ddp_2_ranks"] = r
        print(f"2-rank DDP training step ({t['model']}, {t['resolution']} px, batch 1 per rank): {step_line(r)}")
    else:
        why = f"{report['gpus']} GPU visible" if gpu else "no GPU; --ddp-cpu runs it on 2 CPU ranks"
        print(f"2-rank DDP: skipped ({why})")
    # the study's cost
    sd = report[targets(gpu)[0]["model"]]
    sweeps = [s for s in args.sweeps.split(",") if s]
    if sweeps and "error" not in sd["train"] and "generate_rates" in sd:
        plans = study_plans(sweeps)
        fastest = min(statistics.median(sd[k]["seconds"]) for k in ("train", "train_compiled")
                      if k in sd and "error" not in sd[k])
        hours = gpu_hours(plans, fastest, sd["generate_rates"])
        report["study_gpu_hours"] = hours
        report["study_rates"] = {"s_per_micro_step": fastest, **sd["generate_rates"]}
        what = "GPU-hours" if gpu else "hours at the tiny models' CPU rates (NOT GPU-hours)"
        print(f"the study ({', '.join(f'sweep={s}' for s in sweeps)}; plans from plan=true x the {sd['model']} rates "
              f"above, {fastest:.4f} s per micro-step), {what}:")
        for name, h in hours.items():
            print(f"  {name + ':':7s} {h['points']:3d} runs, training {h['train_h']:.2f} h + evaluation "
                  f"{h['eval_h']:.2f} h = {h['total_h']:.2f} h")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    failed = [f"{m}.{k}" for m, e in report.items() if isinstance(e, dict) for k, v in e.items()
              if isinstance(v, dict) and "error" in v]
    if isinstance(report.get("ddp_2_ranks"), dict) and "error" in report["ddp_2_ranks"]:
        failed.append("ddp_2_ranks")
    report["failed"] = failed
    print(f"gpu-check {'FAILED: ' + ', '.join(failed) if failed else 'passed'} in {report['wall_s']:.0f} s"
          f"{'' if gpu else ' (CPU, tiny models)'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if failed:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
