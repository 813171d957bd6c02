"""The training-method seam (textinv.methods.base.Method): a second method, defined here and nowhere in the
package, trains through the same job, module, callbacks, evaluation and resume as textual inversion.

`TextBias` adds no token: one learned vector added to the UNet's text conditioning through a forward
pre-hook (the way a hypernetwork hooks into the UNet), prompts stay as written, evaluation prompts use the
initializer word, and its file is its own format.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.core.config_store import ConfigStore
from safetensors.torch import load_file, save_file

from conftest import ROOT, compose, tiny_overrides
from textinv.errors import UserError
from textinv.methods.base import Method
from textinv.training.job import train

EVAL = ["eval.enabled=true", "eval.every_n_steps=0", "eval.at_steps=[]", "eval.num_images=1", "eval.sampler_steps=2",
        "eval.fid.enabled=false", "eval.clip.weights=random", "eval.light.enabled=false",
        "eval.prompts=['a photo of {} on the moon']"]


class TextBias(Method):
    """A learned bias on the UNet's `encoder_hidden_states`: trainable part hooked into the frozen UNet."""

    name, row_label, log_tag = "text_bias", "SD + bias", "bias"

    def __init__(self, word: str, initializer: str | None, seed: int = 0, scale: float = 1.0):
        super().__init__(word, initializer, seed)
        self.scale = scale
        self.bias = torch.nn.Parameter(torch.zeros(1))  # sized in attach, once the model's width is known
        self._last_good: torch.Tensor | None = None

    def check(self, tokenizer, train_prompts, eval_prompts) -> None:
        if not self.initializer:
            raise UserError("text_bias needs init=<word>: evaluation prompts use it")

    def identity(self) -> dict:
        return {"scale": float(self.scale)}

    def attach(self, frozen) -> None:
        width = frozen.unet.config.cross_attention_dim
        self.bias = torch.nn.Parameter(torch.zeros(width))

        def add_bias(unet, args, kwargs):
            hidden = kwargs["encoder_hidden_states"]
            kwargs["encoder_hidden_states"] = hidden + (self.scale * self.bias).to(hidden.dtype)
            return args, kwargs

        frozen.unet.register_forward_pre_hook(add_bias, with_kwargs=True)

    @property
    def eval_word(self) -> str:
        return str(self.initializer)

    def state(self) -> dict[str, torch.Tensor]:
        return {"bias": self.bias.detach().clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.bias.copy_(state["bias"])

    def keep_if_finite(self) -> bool:
        if torch.isfinite(self.bias).all():
            self._last_good = self.bias.detach().clone()
            return True
        with torch.no_grad():
            self.bias.copy_(self._last_good)
        return False

    def write_files(self, folder, step: int, suffix: str = "") -> list:
        path = folder / f"bias{suffix}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"bias": self.bias.detach().cpu().contiguous()}, str(path), metadata={"step": str(step)})
        return [path]

    def summary(self) -> dict:
        return {"bias_norm": float(self.bias.detach().norm())}


ConfigStore.instance().store(group="method", name="text_bias_test",
                             node={"_target_": f"{__name__}.TextBias", "_partial_": True, "scale": 1.0})


def test_a_second_method_trains_through_the_same_job(tmp_path, demo_images):
    run_dir = tmp_path / "run"
    train(compose(*tiny_overrides(run_dir, demo_images, 4), "method=text_bias_test", *EVAL))

    summary = json.loads((run_dir / "run.json").read_text())
    assert summary["files"] == ["bias.safetensors"] and summary["step"] == 4
    assert "placeholder" not in summary and summary["bias_norm"] > 0  # its own run.json fields; it trained
    bias = load_file(str(run_dir / "bias.safetensors"))["bias"]
    assert tuple(bias.shape) == (32,) and float(bias.norm()) == pytest.approx(summary["bias_norm"], rel=1e-6)
    assert (run_dir / "snapshots/bias-step000002.safetensors").is_file()  # snapshots through the same writer
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)
    assert list(ckpt["state_dict"]) == ["bias"] and torch.equal(ckpt["state_dict"]["bias"], bias)
    assert ckpt["textinv_identity"]["method"] == "text_bias" and ckpt["textinv_identity"]["scale"] == 1.0
    assert "num_vectors" not in ckpt["textinv_identity"]
    # evaluation prompts hold the initializer word: no new token exists
    metrics = json.loads((run_dir / "eval/metrics.json").read_text())
    assert metrics["final"]["per_prompt"][1]["prompt"] == "a photo of toy on the moon"
    assert "num_vectors" not in metrics


def test_resume_refuses_another_methods_checkpoint(tmp_path, demo_images):
    run_dir = tmp_path / "run"
    train(compose(*tiny_overrides(run_dir, demo_images, 2), "method=text_bias_test"))
    with pytest.raises(UserError, match=r"belongs to a run with method='text_bias', this run has "
                                        r"method='textual_inversion'"):
        train(compose(*tiny_overrides(tmp_path / "ti", demo_images, 2),
                      f"ckpt_path='{run_dir}/checkpoints/last.ckpt'"))
    with pytest.raises(UserError, match=r"method.scale=1.0, this run has method.scale=2.0"):
        train(compose(*tiny_overrides(tmp_path / "b2", demo_images, 2), "method=text_bias_test", "method.scale=2.0",
                      f"ckpt_path='{run_dir}/checkpoints/last.ckpt'"))


def test_old_module_keys_fail_naming_the_new_key(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "module.num_vectors=2", "plan=true"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: module.num_vectors is now method.num_vectors; use method.num_vectors=2"
