"""A run's files against each tool's loading rule (tests/tool_rules.py), for a 1- and a 3-vector token:
all root embedding files dropped into each tool's folder give the concept under its own name, bitwise."""

import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import tool_rules
from tool_rules import TOOLS, ToolRefused
from textinv.formats import load_embedding, save_diffusers
from textinv.placeholder import Placeholder
from textinv.run_files import write_embedding_files

# The name each tool's prompt uses: the file stem, except diffusers, which takes the token from the file.
EXPECTED_NAME = {"automatic1111": "deku-tree", "comfyui": "deku-tree", "kohya": "deku-tree",
                 "invokeai": "deku-tree", "diffusers": "<deku-tree>"}


def fake_module(num_vectors: int, dim: int = 768):
    tokens = ["<deku-tree>"] + [f"<deku-tree>_{i}" for i in range(1, num_vectors)]
    return SimpleNamespace(placeholder=Placeholder("<deku-tree>", tokens, list(range(49408, 49408 + num_vectors))),
                           vectors=torch.randn(num_vectors, dim), model_name="sd15")


@pytest.fixture(params=[1, 3], ids=["1-vector", "3-vector"])
def run(request, tmp_path):
    module = fake_module(request.param)
    write_embedding_files(tmp_path, module, step=500)
    return tmp_path, module.vectors


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_root_files_load_in_each_tool_under_its_name(run, tool, tmp_path_factory):
    run_dir, vectors = run
    tool_folder = tmp_path_factory.mktemp(f"{tool}-embeddings")
    for path in tool_rules.embedding_files(run_dir):  # "copy the run's embeddings into the tool's folder"
        shutil.copy(path, tool_folder)
    loaded = TOOLS[tool](tool_folder)
    assert list(loaded) == [EXPECTED_NAME[tool]]
    assert torch.equal(loaded[EXPECTED_NAME[tool]], vectors)


@pytest.mark.parametrize("tool", ["automatic1111", "comfyui", "kohya", "invokeai"])
def test_pickle_free_safetensors_loads_by_file_name(run, tool):
    run_dir, vectors = run
    loaded = TOOLS[tool](run_dir / "safetensors")
    assert list(loaded) == ["deku-tree"] and torch.equal(loaded["deku-tree"], vectors)


def test_a1111_safe_check_accepts_ours_and_refuses_a_plain_torch_save(run):
    run_dir, vectors = run
    tool_rules.a1111_safe_check(run_dir / "deku-tree.pt")
    torch.save({"string_to_param": {"*": vectors}}, run_dir / "plain.pt")  # torch's own zip: .format_version ...
    with pytest.raises(ToolRefused, match=r"bad file inside plain.pt: .*/\.(format_version|storage_alignment)"):
        tool_rules.a1111_safe_check(run_dir / "plain.pt")


def test_a1111_safe_check_refuses_a_code_global(tmp_path):
    import zipfile
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("archive/data.pkl", b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(ToolRefused, match="os/system"):
        tool_rules.a1111_safe_check(tmp_path / "evil.pt")


def test_invokeai_refuses_the_diffusers_layout_so_it_stays_out_of_the_root(run):
    run_dir, vectors = run
    data = load_file(str(run_dir / "diffusers/learned_embeds.safetensors"))
    assert tool_rules.invokeai_width(data) == vectors.shape[0]  # the vector count, never 768
    with pytest.raises(ToolRefused, match="unrecognized token dimension"):
        tool_rules.invokeai_folder(run_dir / "diffusers")


def test_same_stem_clashes_in_comfyui_and_kohya(run):
    run_dir, vectors = run
    shutil.copy(run_dir / "safetensors/deku-tree.safetensors", run_dir)  # beside deku-tree.pt
    with pytest.raises(ToolRefused, match="shadowed"):
        tool_rules.comfyui_folder(run_dir)
    with pytest.raises(ToolRefused, match="same word"):
        tool_rules.kohya_folder(run_dir)


def test_files_are_2d_fp32_and_our_reader_agrees(run):
    run_dir, vectors = run
    for rel, token, layout in [("deku-tree.pt", "<deku-tree>", "a1111"),
                               ("diffusers/learned_embeds.safetensors", "<deku-tree>", "diffusers"),
                               ("safetensors/deku-tree.safetensors", None, "kohya")]:
        got = load_embedding(run_dir / rel, expected_dim=768)
        assert (got.token, got.layout) == (token, layout) and torch.equal(got.vectors, vectors)
    raw = torch.load(run_dir / "deku-tree.pt", weights_only=True)
    assert raw["string_to_token"] == {"*": 265} and raw["step"] == 500 and raw["sd_checkpoint_name"] == "sd15"
    vec = raw["string_to_param"]["*"]
    assert vec.dtype == torch.float32 and vec.ndim == 2  # kohya counts vectors on the first axis
    assert load_file(str(run_dir / "safetensors/deku-tree.safetensors"))["emb_params"].ndim == 2


@pytest.mark.parametrize("num_vectors", [1, 3])
def test_real_diffusers_loader_registers_the_token(tiny_frozen, tmp_path, num_vectors):
    """diffusers' own load_textual_inversion on the root .pt, default arguments: `<deku-tree>`, bitwise."""
    from test_formats import pipeline

    module = fake_module(num_vectors, dim=tiny_frozen.text_encoder.config.hidden_size)
    write_embedding_files(tmp_path, module, step=1)
    pipe = pipeline(tiny_frozen)
    pipe.load_textual_inversion(str(tmp_path / "deku-tree.pt"))
    names = ["<deku-tree>"] + [f"<deku-tree>_{i}" for i in range(1, num_vectors)]
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    assert pipe.tokenizer.unk_token_id not in ids
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], module.vectors)


def test_atomic_outputs_are_readable_by_others(run):
    import os
    run_dir, _ = run
    mask = os.umask(0o022)
    os.umask(mask)
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_diffusers_file_still_a_single_key(tmp_path):
    path = save_diffusers(tmp_path / "learned_embeds.safetensors", "<t>", torch.ones(2, 768))
    assert list(load_file(str(path))) == ["<t>"]


def test_invokeai_picklescan_passes_the_root_pt(run):
    """InvokeAI scans every .pt with picklescan before torch.load (model_on_disk.py); not a dependency here."""
    scanner = pytest.importorskip("picklescan.scanner")
    result = scanner.scan_file_path(run[0] / "deku-tree.pt")
    assert result.infected_files == 0 and not result.scan_err
