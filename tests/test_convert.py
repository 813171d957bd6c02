"""python -m textinv convert: every layout to every other, bitwise; refusals are one line and exit 2."""

import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import tool_rules
from conftest import ROOT
from textinv.methods.textual_inversion.convert import main
from textinv.methods.textual_inversion.formats import read_embedding, save_a1111, save_diffusers, save_kohya, save_sdxl


@pytest.mark.parametrize("num_vectors", [1, 3])
def test_diffusers_to_the_file_every_tool_loads(tmp_path, num_vectors):
    vectors = torch.randn(num_vectors, 768)
    src = save_diffusers(tmp_path / "learned_embeds.safetensors", "<deku-tree>", vectors)
    main([str(src), str(tmp_path / "out" / "deku-tree.pt")])
    for tool, expected in [("automatic1111", "deku-tree"), ("comfyui", "deku-tree"), ("kohya", "deku-tree"),
                           ("invokeai", "deku-tree"), ("diffusers", "<deku-tree>")]:
        assert {k: v.tolist() for k, v in tool_rules.TOOLS[tool](tmp_path / "out").items()} == \
            {expected: vectors.tolist()}, tool


def test_kohya_pt_to_diffusers_needs_and_takes_a_token(tmp_path):
    vectors = torch.randn(2, 768)
    src = save_kohya(tmp_path / "deku-tree.pt", vectors)
    main([str(src), str(tmp_path / "d.safetensors"), "--to", "diffusers", "--token", "<deku>"])
    assert torch.equal(load_file(str(tmp_path / "d.safetensors"))["<deku>"], vectors)
    main([str(src), str(tmp_path / "folder")])  # no token in a kohya file: the stem, as A1111 would name it
    assert list(load_file(str(tmp_path / "folder/learned_embeds.safetensors"))) == ["deku-tree"]


def test_a1111_pt_to_pickle_free_safetensors(tmp_path):
    vectors = torch.randn(3, 1024)  # SD 2.x
    src = save_a1111(tmp_path / "a.pt", "a", vectors)
    main([str(src), str(tmp_path / "a.safetensors")])
    assert list(load_file(str(tmp_path / "a.safetensors"))) == ["emb_params"]
    back = read_embedding(tmp_path / "a.safetensors")
    assert back.layout == "kohya" and torch.equal(back.vectors, vectors)


def test_sdxl_one_file_to_diffusers_pair_and_back(tmp_path):
    clip_l, clip_g = torch.randn(2, 768), torch.randn(2, 1280)
    src = save_sdxl(tmp_path / "x.safetensors", clip_l, clip_g)
    main([str(src), str(tmp_path / "pair"), "--token", "<x>"])
    assert torch.equal(load_file(str(tmp_path / "pair/learned_embeds.safetensors"))["<x>"], clip_l)
    assert torch.equal(load_file(str(tmp_path / "pair/learned_embeds_2.safetensors"))["<x>"], clip_g)
    main([str(tmp_path / "pair"), str(tmp_path / "x.pt")])
    back = read_embedding(tmp_path / "x.pt")
    assert back.layout == "sdxl" and torch.equal(back.vectors, clip_l) and torch.equal(back.vectors_g, clip_g)
    tool_rules.a1111_safe_check(tmp_path / "x.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("make, out, message", [
    (lambda p: save_diffusers(p / "a.safetensors", "<a>", torch.ones(1, 1280)), "b.pt", "dimension 1280"),
    (lambda p: torch.save({"string_to_param": {"*": torch.ones(1, 768), "+": torch.ones(1, 768)}}, p / "a.pt"),
     "b.pt", "2 tokens"),
    (lambda p: save_file({"x": torch.ones(1, 768), "y": torch.ones(1, 768)}, str(p / "a.safetensors")),
     "b.pt", "unknown embedding layout"),
    (lambda p: save_sdxl(p / "a.safetensors", torch.ones(1, 768), torch.ones(1, 1280)),
     "learned_embeds.safetensors", "two files"),
    (lambda p: save_sdxl(p / "a.safetensors", torch.ones(1, 768), torch.ones(1, 1024)), "b.pt", "clip_g is 1024"),
    (lambda p: (p / "a.pt").write_bytes(pickle.dumps({"string_to_param": {"*": _Exploit()}})), "b.pt", "refused"),
    (lambda p: save_diffusers(p / "a.safetensors", "<a>", torch.ones(1, 768)), "b.bin", "cannot tell the layout"),
])
def test_refusals_are_one_line(tmp_path, capsys, make, out, message):
    make(tmp_path)
    src = next(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main([str(src), str(tmp_path / out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / out).exists()


def test_module_entry_point(tmp_path):
    src = save_diffusers(tmp_path / "learned_embeds.safetensors", "<t>", torch.ones(1, 1280))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "textinv", "convert", str(src), str(tmp_path / "t.pt")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
