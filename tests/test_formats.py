import pickle

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from textinv.errors import UserError
from textinv.methods.textual_inversion.formats import load_embedding, save_a1111, save_diffusers


def pipeline(frozen):
    return StableDiffusionPipeline(vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer,
                                   unet=frozen.unet, scheduler=frozen.noise_scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("num_vectors", [1, 3])
@pytest.mark.parametrize("layout", ["diffusers", "a1111"])
def test_diffusers_loads_exactly_the_trained_vectors(tiny_frozen, tmp_path, layout, num_vectors):
    vectors = torch.randn(num_vectors, 32)
    if layout == "diffusers":
        path = save_diffusers(tmp_path / "learned_embeds.safetensors", "<my-toy>", vectors)
        token = None
    else:
        path = save_a1111(tmp_path / "my-toy.pt", "my-toy", vectors, step=7)
        token = "<my-toy>"
    pipe = pipeline(tiny_frozen)
    pipe.load_textual_inversion(str(path), token=token)
    names = ["<my-toy>"] + [f"<my-toy>_{i}" for i in range(1, num_vectors)]
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    loaded = pipe.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(loaded, vectors)


def test_a1111_layout_and_our_reader(tmp_path):
    vectors = torch.randn(2, 768)
    save_a1111(tmp_path / "deku-tree.pt", "deku-tree", vectors, step=1500, sd_checkpoint_name="sd15")
    raw = torch.load(tmp_path / "deku-tree.pt", weights_only=True)
    assert raw["string_to_token"] == {"*": 265} and raw["name"] == "deku-tree" and raw["step"] == 1500
    assert torch.equal(raw["string_to_param"]["*"], vectors)
    got = load_embedding(tmp_path / "deku-tree.pt", expected_dim=768)
    assert got.layout == "a1111" and got.token == "deku-tree" and torch.equal(got.vectors, vectors)


def test_kohya_and_diffusers_reader(tmp_path):
    torch.save({"emb_params": torch.ones(2, 768)}, tmp_path / "k.pt")
    assert load_embedding(tmp_path / "k.pt").layout == "kohya"
    save_diffusers(tmp_path / "d.safetensors", "<d>", torch.ones(1, 768))
    got = load_embedding(tmp_path / "d.safetensors")
    assert (got.token, got.layout, tuple(got.vectors.shape)) == ("<d>", "diffusers", (1, 768))


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"string_to_param": {"*": exploit}}))
    with pytest.raises(UserError, match="refused"):
        load_embedding(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: save_diffusers(p / "a.safetensors", "<a>", torch.ones(1, 1024)), "dimension 1024"),
    (lambda p: save_file({"x": torch.ones(1, 768), "y": torch.ones(1, 768)}, str(p / "a.safetensors")), "unknown embedding layout"),
    (lambda p: torch.save({"string_to_param": {"*": torch.ones(1, 768), "+": torch.ones(1, 768)}}, p / "a.pt"), "2 tokens"),
    (lambda p: torch.save({"clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1280)}, p / "a.pt"), "SDXL"),
    (lambda p: (p / "a.safetensors").write_bytes(b"12345678garbage"), "not a readable safetensors"),
    (lambda p: (p / "a.pt").write_bytes(b""), "not a readable torch"),
])
def test_bad_embedding_files(tmp_path, make, message):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(UserError, match=message):
        load_embedding(path, expected_dim=768)
