"""The masked loss (`data.masked=true`): each latent pixel's squared error weighted by how much of the subject it
covers.

A mask (1 = subject, at pixel resolution) is area-averaged down to the latent grid (the VAE's 8x; a latent pixel
half covered by the subject weighs 0.5 of the way), then raised to `floor` outside the subject, so the background
still teaches a little (OneTrainer's unmasked_weight). A sample drawn to train unmasked weighs 1 everywhere.
`normalize`: each image's loss is its weighted mean (the sum of weighted errors over the sum of weights), so a small
subject counts as much as a large one; without it, the plain mean of the weighted errors shrinks with the mask's
area and images with small subjects teach less.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W] pixel masks in [0, 1] -> [B, 1, h, w]: the share of each latent pixel's area inside the mask."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.float()
    return F.interpolate(mask.float(), size=tuple(size), mode="area")


def loss_weights(mask: torch.Tensor, floor: float, use_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Latent-resolution masks [B, 1, h, w] -> weights: `floor` outside the subject, 1 inside, linear between;
    samples with use_mask False weigh 1 everywhere."""
    w = floor + (1.0 - floor) * mask.clamp(0, 1)
    if use_mask is not None:
        w = torch.where(use_mask.view(-1, 1, 1, 1).to(w.device), w, torch.ones_like(w))
    return w


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """MSE with per-pixel weights [B, 1, h, w] broadcast over channels."""
    se = (pred.float() - target.float()) ** 2
    w = weights.to(se.dtype).expand_as(se)
    if not normalize:
        return (se * w).mean()
    per_image = (se * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-8)
    return per_image.mean()
