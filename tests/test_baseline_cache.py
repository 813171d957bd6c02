"""The baseline image cache is keyed on the model's weights, not its name.

Found on the toy world: retrained in place, `make demo` served the old weights' SD row from
outputs/.baseline_cache because the key held only the model's path.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from textinv.evaluation.evaluator import baseline_cache_key
from textinv.models.frozen_sd import ModelSource


def _evaluator():
    return SimpleNamespace(templates=["a photo of {}"], settings=lambda protocol=None: {"seed": 1000})


def test_rewritten_weights_in_the_same_folder_get_a_new_key(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"old weights")
    source = ModelSource(path=str(tmp_path))
    before = baseline_cache_key(source.fingerprint(), "shape", _evaluator())
    assert baseline_cache_key(source.fingerprint(), "shape", _evaluator()) == before  # stable while unchanged

    weights.write_bytes(b"new weights")
    os.utime(weights, ns=(1, 1))  # even a same-size rewrite with an old time stamp differs by its time
    after = baseline_cache_key(source.fingerprint(), "shape", _evaluator())
    assert after != before
    weights.write_bytes(b"newer weights, longer")
    os.utime(weights, ns=(1, 1))
    assert baseline_cache_key(source.fingerprint(), "shape", _evaluator()) not in (before, after)


def test_an_uncached_hub_id_is_keyed_by_id_and_revision(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = ModelSource(hub_id="nobody/not-in-the-cache").fingerprint()
    b = ModelSource(hub_id="nobody/not-in-the-cache", revision="v2").fingerprint()
    assert a != b and "nobody/not-in-the-cache" in a
