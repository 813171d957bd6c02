"""Randomly initialised metric networks of the real architectures, for offline demos and tests.

Figures computed with them exercise every code path but mean nothing; entry points log that.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import torch

from textinv.utils.atomic import atomic_write
from textinv.utils.cache import cache_dir


def random_inception_weights(path: str | os.PathLike | None = None, seed: int = 0) -> str:
    """A torch-fidelity Inception v3 weights file holding a seeded random initialisation.

    torch-fidelity always loads weights in its constructor, so that load is skipped while the real
    class is built. Batch-norm statistics are then calibrated on random images (one train-mode pass):
    with unit running variance the activations shrink to ~1e-8 and every Inception Score would be 1.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    path = Path(path) if path else cache_dir("random_weights") / f"inception-random-seed{seed}.pth"
    if path.is_file():
        return str(path)
    skip = {}

    class RandomInit(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None if state_dict is skip else super().load_state_dict(state_dict, *args, **kwargs)

    with torch.random.fork_rng(), mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: skip):
        torch.manual_seed(seed)
        net = RandomInit("random-inception", ["logits_unbiased"])
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration pass
        net.train()
        with torch.no_grad():
            net(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    state = net.eval().state_dict()
    atomic_write(path, lambda p: torch.save(state, p))
    return str(path)
