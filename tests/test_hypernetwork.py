"""Hypernetworks: AUTOMATIC1111's module layout, the UNet hooks, and files both tools rebuild into our functions."""

from __future__ import annotations

import pytest
import torch

from textinv.errors import UserError
from textinv.methods.hypernetwork.attach import attention_input_widths, check_widths, hypernetworks_applied
from textinv.methods.hypernetwork.files import read_hypernetwork, save_a1111_hypernetwork, save_safetensors_hypernetwork
from textinv.methods.hypernetwork.network import Hypernetwork, HypernetworkSpec
from tool_rules import ToolRefused, a1111_hypernetwork, a1111_safe_check, comfyui_hypernetwork

SD1_WIDTHS = (320, 640, 768, 1280)


def trained_like(spec: HypernetworkSpec, widths=(32, 64), seed=0) -> Hypernetwork:
    """A network whose weights are far from the near-identity init, so a wrong rebuild shows in the outputs."""
    net = Hypernetwork(widths, spec, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


def test_dropout_structure_and_layer_order_follow_automatic1111():
    assert HypernetworkSpec().dropout_structure == (0, 0, 0)
    assert HypernetworkSpec(use_dropout=True).dropout_structure == (0, 0, 0)  # [1, 2, 1]: no hidden layer but the last
    assert HypernetworkSpec(use_dropout=True, last_layer_dropout=True).dropout_structure == (0, 0.3, 0)
    assert HypernetworkSpec((1, 2, 2, 1), use_dropout=True).dropout_structure == (0, 0.3, 0, 0)
    net = Hypernetwork([8], HypernetworkSpec((1, 2, 1), activation="relu", layer_norm=True, activate_output=True))
    kinds = [type(m).__name__ for m in net.pairs["8"][0].linear]
    assert kinds == ["Linear", "ReLU", "LayerNorm", "Linear", "ReLU", "LayerNorm"]
    plain = Hypernetwork([8], HypernetworkSpec())
    assert list(plain.pairs["8"][0].state_dict()) == ["linear.0.weight", "linear.0.bias", "linear.1.weight",
                                                      "linear.1.bias"]
    assert plain.pairs["8"][0].linear[0].weight.shape == (16, 8)


def test_normal_init_is_near_identity_and_seeded():
    a, b = Hypernetwork([64], HypernetworkSpec(), seed=3), Hypernetwork([64], HypernetworkSpec(), seed=3)
    w = a.pairs["64"][0].linear[0].weight
    assert torch.equal(w, b.pairs["64"][0].linear[0].weight)
    assert abs(float(w.detach().std()) - 0.01) < 0.001 and float(a.pairs["64"][0].linear[0].bias.abs().max()) == 0
    assert not torch.equal(w, Hypernetwork([64], HypernetworkSpec(), seed=4).pairs["64"][0].linear[0].weight)


@pytest.mark.parametrize("kwargs, says", [
    (dict(layer_structure=(2, 1)), "start and end with 1"),
    (dict(layer_structure=(1, 0, 1)), "positive"),
    (dict(activation="gelu"), "choose one of linear"),
    (dict(weight_init="Orthogonal"), "choose one of Normal"),
    (dict(activation="relu", layer_norm=True), "activate_output=true"),
])
def test_bad_options_are_one_line(kwargs, says):
    with pytest.raises(UserError, match=says) as err:
        HypernetworkSpec(**kwargs).check()
    assert "\n" not in str(err.value)


def test_hooks_transform_only_key_and_value_inputs_and_come_off(tiny_frozen):
    unet = tiny_frozen.unet
    widths = attention_input_widths(unet)
    assert len(widths) >= 2  # self-attention (image features) and cross-attention (text context) widths
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10])
    with torch.no_grad():
        before = unet(sample, t, encoder_hidden_states=context).sample
        net = trained_like(HypernetworkSpec(), widths)
        seen = {"q": [], "k": [], "v": []}
        with hypernetworks_applied(unet, [(net, 1.0)]):  # recording hooks registered after ours run after them
            hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen[n].append(a[0].clone()))
                     for name, m in unet.named_modules() for n in "qkv" if name.endswith(f"to_{n}")]
            during = unet(sample, t, encoder_hidden_states=context).sample
            for h in hooks:
                h.remove()
        after = unet(sample, t, encoder_hidden_states=context).sample
        zero = trained_like(HypernetworkSpec(), widths)
        for pair in zero.pairs.values():
            for m in pair:
                m.linear[-1].weight.zero_(), m.linear[-1].bias.zero_()
        with hypernetworks_applied(unet, [(zero, 1.0)]):
            unchanged = unet(sample, t, encoder_hidden_states=context).sample
    assert torch.equal(before, after) and torch.equal(before, unchanged)
    assert not torch.allclose(before, during)
    # keys and values arrive transformed (cross-attention: the context; self-attention: the queries' input)
    cross = [k for k in seen["k"] if k.shape[1] == 77]
    assert cross and all(torch.allclose(k, net.transform(context, 0)) for k in cross)
    self_attention = [(q, k) for q, k in zip(seen["q"], seen["k"]) if k.shape[1] != 77]
    assert self_attention and all(torch.allclose(k, net.transform(q, 0)) for q, k in self_attention)
    assert any(not torch.equal(k, v) for k, v in zip(seen["k"], seen["v"]))  # separate key and value modules


def test_multiplier_scales_the_residual_and_stacks_in_order():
    a, b = trained_like(HypernetworkSpec(), [16], seed=1), trained_like(HypernetworkSpec(), [16], seed=2)
    x = torch.randn(3, 16)
    with torch.no_grad():
        half = a.transform(x, 0, 0.5)
        assert torch.allclose(half - x, (a.transform(x, 0, 1.0) - x) * 0.5, atol=1e-6)
        assert torch.equal(a.transform(x, 0, 0.0), x)
        unknown_width = torch.randn(2, 24)
        assert torch.equal(a.transform(unknown_width, 1), unknown_width)  # no module for 24: passes through
        stacked = b.transform(a.transform(x, 0, 1.0), 0, 1.0)
        with hypernetworks_applied(torch.nn.Module(), []):
            pass
    from textinv.methods.hypernetwork.attach import HypernetworkHooks

    hooks = HypernetworkHooks(torch.nn.Module(), [(a, 1.0), (b, 1.0)])
    assert torch.allclose(hooks._hook(0)(None, (x,))[0], stacked)


@pytest.mark.parametrize("spec", [
    HypernetworkSpec(),
    HypernetworkSpec((1, 2, 1), activation="relu"),
    HypernetworkSpec((1, 1.5, 2, 1), activation="mish", layer_norm=True, activate_output=True),
    HypernetworkSpec((1, 2, 1), activation="swish", weight_init="KaimingNormal"),
])
def test_files_rebuild_into_the_same_functions_in_both_tools(tmp_path, spec):
    net = trained_like(spec)
    pt = save_a1111_hypernetwork(tmp_path / "style.pt", net, "style", step=7, sd_checkpoint_name="tiny")
    st = save_safetensors_hypernetwork(tmp_path / "style.safetensors", net, "style", step=7)
    a1111_safe_check(pt)
    raw = torch.load(pt, weights_only=True)
    assert sorted(k for k in raw if isinstance(k, int)) == [32, 64] and isinstance(raw[32], tuple)
    for key in ("name", "step", "layer_structure", "activation_func", "is_layer_norm", "weight_initialization",
                "use_dropout", "dropout_structure", "last_layer_dropout", "activate_output", "sd_checkpoint",
                "sd_checkpoint_name", "optional_info"):
        assert key in raw, key
    x = {w: torch.randn(4, 7, w, generator=torch.Generator().manual_seed(w)) for w in (32, 64)}
    tools = {"a1111": a1111_hypernetwork(pt, 0.7), "comfyui": comfyui_hypernetwork(pt, 0.7)}
    for loaded in (read_hypernetwork(pt), read_hypernetwork(st)):
        assert loaded.name == "style" and loaded.step == 7 and loaded.hypernetwork.spec == spec
        for ours, theirs in zip(loaded.hypernetwork.parameters(), net.parameters()):
            assert torch.equal(ours, theirs)  # bitwise the trained weights
    with torch.no_grad():
        for tool, rebuilt in tools.items():
            assert sorted(rebuilt) == [32, 64], tool
            for w in (32, 64):
                for which in (0, 1):
                    assert torch.allclose(rebuilt[w][which](x[w]), net.transform(x[w], which, 0.7), atol=1e-6), tool


def test_tool_rules_see_the_defaults_that_differ(tmp_path):
    """A file without activate_output means an activated output to AUTOMATIC1111 and none to ComfyUI: why we
    write every field. And AUTOMATIC1111 ignores string width keys."""
    net = trained_like(HypernetworkSpec(activation="tanh"))
    pt = save_a1111_hypernetwork(tmp_path / "x.pt", net, "x")
    raw = torch.load(pt, weights_only=True)
    del raw["activate_output"]
    torch.save(raw, tmp_path / "y.pt")
    x = torch.randn(2, 32)
    with torch.no_grad():
        c = comfyui_hypernetwork(tmp_path / "y.pt")[32][0](x)
        assert torch.allclose(c, net.transform(x, 0))  # ComfyUI: no output activation, as trained
    with pytest.raises(ToolRefused, match="may be malicious"):
        a1111_hypernetwork(tmp_path / "y.pt")  # today's torch.save adds zip entries its safe check refuses
    raw["activate_output"] = False
    raw = {str(k) if isinstance(k, int) else k: v for k, v in raw.items()}
    save = tmp_path / "z.pt"
    from textinv.methods.textual_inversion.formats import a1111_safe_torch_bytes

    save.write_bytes(a1111_safe_torch_bytes(raw))
    assert a1111_hypernetwork(save) == {} and sorted(comfyui_hypernetwork(save)) == [32, 64]
    with pytest.raises(UserError, match="no hypernetwork modules"):
        read_hypernetwork(save)


def test_reader_refuses_what_is_not_a_hypernetwork(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable torch file"):
        read_hypernetwork(tmp_path / "junk.pt")
    net = trained_like(HypernetworkSpec())
    pt = save_a1111_hypernetwork(tmp_path / "h.pt", net, "h")
    raw = torch.load(pt, weights_only=True)
    raw[32][0]["linear.0.weight"][0, 0] = float("nan")
    (tmp_path / "nan.pt").write_bytes(__import__("textinv.methods.textual_inversion.formats", fromlist=["x"])
                                      .a1111_safe_torch_bytes(raw))
    with pytest.raises(UserError, match="non-finite"):
        read_hypernetwork(tmp_path / "nan.pt")
    with pytest.raises(UserError, match="does not exist"):
        read_hypernetwork(tmp_path / "missing.pt")


def test_a_width_the_model_lacks_is_refused():
    check_widths([320, 768], SD1_WIDTHS)
    with pytest.raises(UserError, match="no attention input of width 1024"):
        check_widths([1024], SD1_WIDTHS)


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"name": Evil()}))
    torch.save({"name": Evil(), 32: ({}, {})}, tmp_path / "evil2.pt")
    for name in ("evil.pt", "evil2.pt"):
        with pytest.raises(UserError, match="refused to load|not a readable"):
            read_hypernetwork(tmp_path / name)
    assert not marker.exists()


def test_widths_from_the_config_alone_match_the_built_unet(tiny_frozen):
    from textinv.methods.hypernetwork.attach import attention_widths_from_config
    from textinv.models.random_weights import ARCHS

    assert attention_widths_from_config(dict(tiny_frozen.unet.config)) == attention_input_widths(tiny_frozen.unet)
    assert attention_widths_from_config(ARCHS["sd15_arch"]["unet"]) == [320, 640, 768, 1280]  # SD 1.5's widths
    from textinv.models.family import SDXL

    assert attention_widths_from_config(SDXL.archs["sdxl_arch"]["unet"]) == [640, 1280, 2048]  # no attention at 320


def test_convert_command_moves_a_hypernetwork_between_layouts_bitwise(tmp_path):
    from conftest import run_script

    net = trained_like(HypernetworkSpec(activation="relu"))
    pt = save_a1111_hypernetwork(tmp_path / "style.pt", net, "style", step=3)
    out = tmp_path / "copy.safetensors"
    proc = run_script("-m textinv", "convert", pt, out)
    assert proc.returncode == 0, proc.stderr
    back = tmp_path / "back.pt"
    proc = run_script("-m textinv", "convert", out, back)
    assert proc.returncode == 0, proc.stderr
    a1111_safe_check(back)
    for path in (out, back):
        loaded = read_hypernetwork(path)
        assert loaded.name == "style" and loaded.step == 3 and loaded.hypernetwork.spec == net.spec
        assert all(torch.equal(a, b) for a, b in zip(loaded.hypernetwork.parameters(), net.parameters()))
    bad = run_script("-m textinv", "convert", pt, tmp_path / "x.bin")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and bad.stderr.count("\n") == 1
