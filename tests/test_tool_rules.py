"""A run's files against each tool's loading rule (tests/tool_rules.py), for a 1- and a 3-vector token:
all root embedding files dropped into each tool's folder give the concept under its own name, bitwise."""

import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import tool_rules
from tool_rules import TOOLS, ToolRefused
from textinv.models.family import SD, SDXL
from textinv.methods.textual_inversion.formats import load_embedding, read_sdxl_embedding, save_diffusers
from textinv.methods.textual_inversion.placeholder import Placeholder, vector_tokens
from textinv.methods.textual_inversion.families import write_files

# The name each tool's prompt uses: the file stem, except diffusers, which takes the token from the file.
EXPECTED_NAME = {"automatic1111": "deku-tree", "comfyui": "deku-tree", "kohya": "deku-tree",
                 "invokeai": "deku-tree", "diffusers": "<deku-tree>"}


def fake_module(num_vectors: int, dim: int = 768, family=SD, widths=None):
    """What a training run writes files from: the word, its vectors, the model family and encoder widths."""
    tokens = vector_tokens("<deku-tree>", num_vectors)
    widths = widths or (dim,)
    return SimpleNamespace(placeholder=Placeholder("<deku-tree>", tokens, list(range(49408, 49408 + num_vectors))),
                           vectors=torch.randn(num_vectors, sum(widths)), model_name="sd15", family=family,
                           widths=widths)


def write_module_files(folder, module, step: int):
    return write_files(module.family, folder, module.placeholder, module.vectors, module.widths, step, module.model_name)


@pytest.fixture(params=[1, 3], ids=["1-vector", "3-vector"])
def run(request, tmp_path):
    module = fake_module(request.param)
    write_module_files(tmp_path, module, 500)
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
    write_module_files(tmp_path, module, 1)
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


# --- SDXL runs: {clip_l, clip_g} named after the token + diffusers' pair ----------------------------------
@pytest.fixture(params=[1, 3], ids=["1-vector", "3-vector"])
def sdxl_run(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl-run")
    module = fake_module(request.param, family=SDXL, widths=(768, 1280))
    write_module_files(folder, module, 500)
    return folder, module.vectors[:, :768], module.vectors[:, 768:]


def test_sdxl_run_files_are_the_pair_layouts(sdxl_run):
    run_dir, clip_l, clip_g = sdxl_run
    assert sorted(p.name for p in tool_rules.embedding_files(run_dir)) == ["deku-tree.safetensors"]  # one root file
    root = load_file(str(run_dir / "deku-tree.safetensors"))
    assert set(root) == {"clip_l", "clip_g"}
    assert torch.equal(root["clip_l"], clip_l) and torch.equal(root["clip_g"], clip_g)
    assert all(v.dtype == torch.float32 and v.ndim == 2 for v in root.values())
    first = load_file(str(run_dir / "diffusers/learned_embeds.safetensors"))
    second = load_file(str(run_dir / "diffusers/learned_embeds_2.safetensors"))
    assert list(first) == list(second) == ["<deku-tree>"]
    assert torch.equal(first["<deku-tree>"], clip_l) and torch.equal(second["<deku-tree>"], clip_g)
    # this project reads all three forms back as one SDXL embedding
    for where in (run_dir / "deku-tree.safetensors", run_dir / "diffusers",
                  run_dir / "diffusers/learned_embeds.safetensors"):
        got = read_sdxl_embedding(where)
        assert got.layout == "sdxl" and torch.equal(got.vectors, clip_l) and torch.equal(got.vectors_g, clip_g)


@pytest.mark.parametrize("tool", sorted(tool_rules.SDXL_TOOLS))
def test_sdxl_root_file_loads_in_each_tool_with_an_sdxl_model(sdxl_run, tool, tmp_path_factory):
    run_dir, clip_l, clip_g = sdxl_run
    folder = tmp_path_factory.mktemp(f"{tool}-sdxl")
    for path in tool_rules.embedding_files(run_dir):
        shutil.copy(path, folder)
    loaded = tool_rules.SDXL_TOOLS[tool](folder)
    assert list(loaded) == ["deku-tree"]
    assert torch.equal(loaded["deku-tree"][0], clip_l) and torch.equal(loaded["deku-tree"][1], clip_g)


def test_sdxl_model_in_a1111_skips_an_sd15_file_and_sd_reader_refuses_sdxl(sdxl_run, run):
    sdxl_dir, _, _ = sdxl_run
    sd_dir, _ = run
    assert tool_rules.a1111_sdxl_folder(sd_dir) == {}  # 768 wide: skipped by an SDXL model, as A1111 does
    with pytest.raises(Exception, match="SDXL embedding: skipped by an SD 1.x model"):
        tool_rules.a1111_folder(sdxl_dir)
    from textinv.errors import UserError
    with pytest.raises(UserError, match="is an SDXL embedding .* use it with an SDXL model"):
        load_embedding(sdxl_dir / "deku-tree.safetensors", expected_dim=768)
    with pytest.raises(UserError, match="one text encoder's embedding .* SDXL has two"):
        read_sdxl_embedding(sd_dir / "deku-tree.pt")
