"""The LightningModule: a frozen Stable Diffusion and a training method's trainable part (textinv.methods).

One training step: cached latent moments (or the VAE encoder, when augmentations change pixels) ->
sample a latent -> add noise at a uniform timestep -> text encoder(s) on the prompt as the method
rewrites it -> UNet -> MSE against the noise (or the velocity, for v-prediction models).
How prompts become the UNet's conditioning is the model family's (textinv.models.family: SD 1.x/2.x, or
SDXL with two encoders, pooled text embedding and size conditioning); what trains, and where it attaches
to the frozen model, is the method's.
Checkpoints hold the method's state, optimizer, LR schedule and step; never the frozen model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.optimization import get_scheduler

from textinv.errors import NumericalFault, UserError
from textinv.methods.base import Method
from textinv.training.lr_schedule import parse_lr
from textinv.training.masked_loss import latent_mask, loss_weights, weighted_mse
from textinv.models.frozen_sd import FrozenSD
from textinv.models.speed import SpeedSettings, apply_speed, describe, time_compile

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction")  # the targets noised_and_target knows


def check_prediction_type(model: str, prediction_type: str) -> None:
    """A model predicting anything else (e.g. `sample`) would train against the wrong target: refuse it."""
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(f"model {model} predicts {prediction_type!r}, which the training loss does not know; "
                        f"it trains {' and '.join(PREDICTION_TYPES)} models only")


@dataclass
class OptimConfig:
    """AdamW on the method's parameters. `scale_lr` multiplies lr by batch x accumulation x devices, as the
    original work did (its 5e-3 base became 0.04 on 2 GPUs x batch 4)."""

    lr: float | str = 5e-4  # or AUTOMATIC1111's schedule string "5e-3:100, 1e-3:1000, 1e-5" (training/lr_schedule.py)
    weight_decay: float = 0.0  # >0 pulls the trained weights toward zero: off by default
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scale_lr: bool = True
    schedule: str = "constant"  # constant | constant_with_warmup | cosine | linear
    warmup_steps: int = 0


def sample_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """Per-sample RNG: noise and timestep depend on (seed, sample index) only, not on rank or batch."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + index) % (2**63 - 1))


class ConceptModule(L.LightningModule):
    """Training of one concept: `method` attached to `frozen`; only the method's parameters train."""

    def __init__(self, frozen: FrozenSD, method: Method, optim: OptimConfig, seed: int = 0,
                 frozen_dtype: str = "auto", compile: bool = False, compile_backend: str = "inductor",
                 compile_mode: str | None = None, compile_freeze: bool = True):
        super().__init__()
        self.family = frozen.family
        method.attach(frozen)
        self.frozen = frozen  # a plain attribute: the parts below are what Lightning registers and moves
        self.tokenizer = frozen.tokenizer
        self.text_encoder, self.vae, self.unet = frozen.text_encoder, frozen.vae, frozen.unet
        self.text_encoder_2 = frozen.text_encoder_2  # SDXL's second encoder (None for SD 1.x/2.x)
        self.method = method  # after the frozen parts: a tensor the method put inside them keeps their name
        self.noise_scheduler = frozen.noise_scheduler
        self.size_conditioning: torch.Tensor | None = None  # [N, 6] per training image (SDXL's time_ids)
        self.optim, self.seed, self.frozen_dtype = optim, seed, frozen_dtype
        # compile=true (textinv.models.speed): applied at fit start, after the frozen weights are cast and moved
        self.speed = SpeedSettings(bool(compile), compile_backend, compile_mode, bool(compile_freeze))
        self.compile_report: dict | None = None
        self.model_name = frozen.name
        self.latent_mean: torch.Tensor | None = None  # [N, 2 (plain, flipped), C, h, w]
        self.latent_std: torch.Tensor | None = None
        # data.masked: the masks at latent resolution, cached beside the moments: [N, 2 (plain, flipped), 1, h, w]
        self.latent_masks: torch.Tensor | None = None
        self.masking = None  # data.masked: the datamodule's Masking (floor, unmasked share, normalisation)
        self.identity: dict = {}  # what checkpoints belong to (textinv.training.resume), set by textinv.training.job
        self.strict_loading = False  # checkpoints hold only the method's state
        # DDP: only the method's parameters are synchronised; frozen weights are identical on every rank already.
        self._ddp_params_and_buffers_to_ignore = [n for n, p in self.named_parameters() if not p.requires_grad] + [
            n for n, _ in self.named_buffers()]

    # --- set-up -------------------------------------------------------------------------------
    def _cast_frozen(self) -> None:
        """On a GPU with mixed precision the frozen weights may sit in half precision; trained ones stay fp32."""
        if self.device.type != "cuda":
            return
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(self.frozen_dtype)
        if dtype is None:  # auto: follow the trainer precision
            precision = str(self.trainer.precision)
            dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else None
        if dtype is not None:
            self.cast_frozen(dtype)

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Frozen weights to `dtype`; the trainable ones stay fp32, and so does a VAE that overflows in fp16."""
        keep = set(map(id, self.vae.parameters())) if self.family.keep_vae_fp32 else set()  # SDXL's VAE: fp16 NaNs
        for p in self.parameters():
            if not p.requires_grad and id(p) not in keep:
                p.data = p.data.to(dtype)

    @torch.no_grad()
    def _encode_moments(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    @torch.no_grad()
    def build_latent_cache(self, pixels: torch.Tensor, chunk: int = 4, masks: torch.Tensor | None = None) -> None:
        """Encode every training image and its mirror once; steps then only sample from the moments. With masks
        ([N, 1, H, W]), each view's mask at latent resolution is cached under the same (image, flip) key."""
        views = torch.stack([pixels, pixels.flip(-1)], 1).flatten(0, 1)
        moments = [self._encode_moments(views[i : i + chunk]) for i in range(0, len(views), chunk)]
        mean = torch.cat([m for m, _ in moments]).unflatten(0, (len(pixels), 2))
        std = torch.cat([s for _, s in moments]).unflatten(0, (len(pixels), 2))
        self.latent_mean, self.latent_std = mean, std
        self.latent_masks = None
        if masks is not None:
            small = latent_mask(masks, mean.shape[-2:])
            self.latent_masks = torch.stack([small, small.flip(-1)], 1).to(mean.device)
        log.info("cached latents of %d images (+ mirrors): %s%s", len(pixels), tuple(mean.shape),
                 " with their masks" if masks is not None else "")

    def on_fit_start(self) -> None:
        self._cast_frozen()
        apply_speed(self.frozen, self.speed, self.method.trains_inside)
        dm = self.trainer.datamodule
        if dm is not None and getattr(dm, "masked", False):
            self.masking = dm.masking
        if dm is not None and dm.use_cache:
            self.build_latent_cache(dm.pixel_tensor(), masks=dm.mask_tensor() if self.masking is not None else None)
        if dm is not None:
            self.size_conditioning = dm.size_conditioning()

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen.modules:  # frozen parts never leave eval mode
            m.eval()
        return self

    # --- the step -----------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> list[torch.Tensor]:
        """Token ids per tokenizer (one for SD 1.x/2.x, two for SDXL)."""
        ids = self.family.tokenize(self.frozen.tokenizers, [self.method.prompt(p) for p in prompts])
        return [i.to(self.device) for i in ids]

    def time_ids(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's (original size, crop top-left, target size); used by families that condition on it."""
        if self.size_conditioning is None:
            self.size_conditioning = self.trainer.datamodule.size_conditioning()
        return self.size_conditioning[images.cpu().long()].to(self.device)

    def latents(self, batch: dict, gens: list[torch.Generator]) -> torch.Tensor:
        if "pixels" in batch:
            mean, std = self._encode_moments(batch["pixels"])
        else:
            idx, flip = batch["image"].to(self.device), batch["flip"].long().to(self.device)
            mean, std = self.latent_mean[idx, flip], self.latent_std[idx, flip]
        eps = torch.stack([torch.randn(mean.shape[1:], generator=g, device=self.device) for g in gens])
        return (mean + std * eps) * self.vae.config.scaling_factor

    def loss(self, batch: dict) -> torch.Tensor:
        gens = [sample_generator(self.seed, int(i), self.device) for i in batch["index"]]
        latents = self.latents(batch, gens)
        noise = torch.stack([torch.randn(latents.shape[1:], generator=g, device=self.device) for g in gens])
        num_t = self.noise_scheduler.config.num_train_timesteps
        t = torch.cat([torch.randint(0, num_t, (1,), generator=g, device=self.device) for g in gens])
        noisy, target = self.noised_and_target(latents, noise, t)
        pred = self.unet(noisy.to(self.unet.dtype), t, **self.unet_conditioning(batch["prompt"], batch["image"])).sample
        weights = self.loss_weights(batch, latents.shape[-2:])
        if weights is None:
            return F.mse_loss(pred.float(), target.float())
        return weighted_mse(pred, target, weights, self.masking.normalize)

    def loss_weights(self, batch: dict, size) -> torch.Tensor | None:
        """data.masked: per-sample weights at latent resolution [B, 1, h, w] (None: a plain mean)."""
        if self.masking is None:
            return None
        if "mask" in batch:  # pixels went through augmentations: so did their masks
            small = latent_mask(batch["mask"].to(self.device), size)
        else:
            idx, flip = batch["image"].to(self.device), batch["flip"].long().to(self.device)
            small = self.latent_masks[idx, flip]
        use = batch.get("use_mask")
        return loss_weights(small, self.masking.floor, None if use is None else torch.as_tensor(use, device=self.device))

    def noised_and_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        """The noised latents and what the UNet must predict from them (noise, or v for v-prediction models)."""
        sched = self.noise_scheduler
        prediction = sched.config.prediction_type
        check_prediction_type(self.model_name, prediction)
        noisy = sched.add_noise(latents, noise, t)
        target = sched.get_velocity(latents, noise, t) if prediction == "v_prediction" else noise
        return noisy, target

    def unet_conditioning(self, prompts: list[str], images: torch.Tensor) -> dict:
        """The UNet's text (and, per family, size) conditioning of prompts paired with training images."""
        cond = self.family.encode(self.frozen.text_encoders, self.frozen.tokenizers, self.tokenize(prompts))
        time_ids = self.time_ids(images) if self.family.size_conditioned else None
        return self.family.unet_kwargs(cond, time_ids, self.unet.dtype)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        """compile=true: before the first micro-step, its forward and backward timed eager and compiled (the first
        compiled call compiles), gradients dropped: compile time and break-even in the log and run.json."""
        if not self.speed.compile or self.compile_report is not None:
            return

        def step() -> None:
            self.loss(batch).backward()

        self.compile_report = time_compile(step, self._sync)
        for p in self.method.parameters():
            p.grad = None
        if self.trainer.is_global_zero:
            log.info("compile=true: %s", describe(self.compile_report))

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """Stop on the first non-finite trained weight (a NaN/inf loss leads there); the method keeps its last
        good state. The parameters are synchronised across DDP ranks, so every rank stops together."""
        if self.method.keep_if_finite():
            return
        run_dir = Path(self.trainer.default_root_dir)
        where = run_dir  # rank 0 writes the files
        if self.trainer.is_global_zero:
            where = self.method.write_files(run_dir, self.global_step, suffix="-last-good")[0]
        loss = outputs["loss"].item() if isinstance(outputs, dict) else float("nan")
        raise NumericalFault(
            f"training diverged at step {self.global_step} (loss {loss}, non-finite trained weights); the last good "
            f"state is in {where}; lower lr= or use trainer.precision=32")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("loss", loss, prog_bar=True, batch_size=len(batch["index"]))
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        extra = self.method.regularization()
        if extra is not None:
            self.log("loss_reg", extra.detach(), batch_size=len(batch["index"]))
            loss = loss + extra
        strength = self.method.strength()  # the word's strength: a curve per vector and the vocabulary's reference
        if strength:
            self.log_dict(strength, on_step=True, on_epoch=False, batch_size=len(batch["index"]))
        return loss

    def optimizer_step(self, *args, **kwargs):
        out = super().optimizer_step(*args, **kwargs)
        self.method.after_step()  # once per optimizer step, after the update (e.g. the norm rescale)
        return out

    # --- optimisation -------------------------------------------------------------------------
    def effective_lr(self) -> float:
        """The first rate of the schedule, scaled when `scale_lr` (every later rate keeps its ratio to it)."""
        o = self.optim
        first = parse_lr(o.lr).first_rate
        if not o.scale_lr:
            return first
        dm = self.trainer.datamodule
        return first * dm.batch_size * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def configure_optimizers(self):
        lr = self.effective_lr()
        log.info("learning rate %.3g (base %s, scale_lr=%s)", lr, self.optim.lr, self.optim.scale_lr)
        opt = torch.optim.AdamW(list(self.method.parameters()), lr=lr, betas=tuple(self.optim.betas), eps=self.optim.eps,
                                weight_decay=self.optim.weight_decay)
        rates = parse_lr(self.optim.lr)
        if len(rates.pieces) > 1:  # a schedule string is the whole schedule (checked against optim.schedule early)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, rates.factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        try:
            sched = get_scheduler(self.optim.schedule, opt, num_warmup_steps=self.optim.warmup_steps,
                                  num_training_steps=max(1, self.trainer.max_steps))
        except ValueError as err:
            raise UserError(f"optim.schedule={self.optim.schedule!r}: {err}") from err
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- checkpoints: the method's state only ----------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.method.state()
        checkpoint["model_name"] = self.model_name
        if self.identity:
            from textinv.training.resume import IDENTITY_KEY

            checkpoint[IDENTITY_KEY] = dict(self.identity)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.method.load_state(checkpoint.get("state_dict", {}))
