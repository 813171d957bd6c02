import pytest
import torch

from textinv.errors import UserError
from textinv.methods.textual_inversion.placeholder import PlaceholderEmbedding, add_placeholder, check_placeholder


def test_only_placeholder_positions_change(tiny_frozen):
    tok, enc = tiny_frozen.tokenizer, tiny_frozen.text_encoder
    base = enc.get_input_embeddings()
    before = base.weight.clone()
    ph = add_placeholder(tok, enc, "<my-toy>", 1, "toy")
    emb = enc.get_input_embeddings()
    assert isinstance(emb, PlaceholderEmbedding) and emb.base is base
    with torch.no_grad():
        emb.vectors.add_(torch.randn_like(emb.vectors))
    ids = tok("a photo of <my-toy> on a table", padding="max_length", max_length=77, return_tensors="pt").input_ids
    out = emb(ids)[0]
    is_new = ids[0] == ph.token_ids[0]
    assert is_new.sum() == 1
    assert torch.equal(out[~is_new], before[ids[0][~is_new]])
    assert torch.equal(out[is_new][0], emb.vectors[0])
    assert torch.equal(base.weight, before)  # the vocabulary matrix is never written


def test_init_from_word_and_multi_token_mean(tiny_frozen):
    tok, enc = tiny_frozen.tokenizer, tiny_frozen.text_encoder
    W = enc.get_input_embeddings().weight.detach().clone()
    ph = add_placeholder(tok, enc, "<a-b>", 2, "watercolor landscape")
    ids = tok("watercolor landscape", add_special_tokens=False).input_ids
    assert len(ids) > 1
    vec = enc.get_input_embeddings().vectors
    assert vec.shape == (2, W.shape[1]) and vec.dtype == torch.float32
    assert torch.allclose(vec[0], W[ids].mean(0)) and torch.allclose(vec[1], W[ids].mean(0))
    assert ph.tokens == ["<a-b>", "<a-b>_1"]
    assert ph.expand("a photo of <a-b>") == "a photo of <a-b> <a-b>_1"


def test_random_init_is_seeded(tiny_source):
    a, b = tiny_source.load(), tiny_source.load()
    add_placeholder(a.tokenizer, a.text_encoder, "<r>", 1, None, "random", seed=3)
    add_placeholder(b.tokenizer, b.text_encoder, "<r>", 1, None, "random", seed=3)
    va, vb = a.text_encoder.get_input_embeddings().vectors, b.text_encoder.get_input_embeddings().vectors
    assert torch.equal(va, vb) and va.abs().sum() > 0


def test_gradients_reach_only_the_parameter_and_every_vector(tiny_frozen):
    tok, enc = tiny_frozen.tokenizer, tiny_frozen.text_encoder
    ph = add_placeholder(tok, enc, "<g>", 3, "toy")
    ids = tok(ph.expand("a photo of <g>"), padding="max_length", max_length=77, return_tensors="pt").input_ids
    enc(ids)[0].pow(2).sum().backward()
    grads = {n: p.grad for n, p in enc.named_parameters()}
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0].endswith("vectors")
    assert all(g is None for n, g in grads.items() if n not in trainable)
    g = grads[trainable[0]]
    assert g.shape == (3, 32) and bool((g.abs().sum(1) > 0).all())  # all three vectors are used


@pytest.mark.parametrize("token, message", [
    ("cat", "already a token"),
    ("<a b>", "whitespace"),
    ("", "empty"),
])
def test_bad_placeholders(tiny_frozen, token, message):
    with pytest.raises(UserError, match=message):
        check_placeholder(tiny_frozen.tokenizer, token)


def test_empty_initializer(tiny_frozen):
    with pytest.raises(UserError, match="initializer"):
        add_placeholder(tiny_frozen.tokenizer, tiny_frozen.text_encoder, "<x-y>", 1, "  ")
