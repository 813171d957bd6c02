"""Metrics against their definitions, offline: random weights of the real architectures, saved to local files."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.evaluation import metrics as M
from textinv.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Single-threaded: on a busy 2-core machine every tiny op otherwise waits for the second thread to be
    scheduled (this file took 80 s with 2 threads vs 26 s with 1 under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def noise_images(n: int, seed: int, size: int = 64) -> list[Image.Image]:
    rs = np.random.RandomState(seed)
    return [Image.fromarray(rs.randint(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def flat_images(levels) -> list[Image.Image]:
    return [Image.fromarray(np.full((64, 64, 3), v, np.uint8)) for v in levels]


# ---------------------------------------------------------------- definitions on fixed vectors

def test_clip_i_hand_computed():
    train = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    gen = torch.tensor([[2.0, 0, 0], [0, 0, 1], [1, 1, 0]])  # unnormalised on purpose
    # cosines: row 1 -> [1, 0, 1/sqrt2], row 2 -> [0, 0, 1/sqrt2]; all 6 pairs averaged
    assert M.clip_i(train, gen) == pytest.approx((1 + math.sqrt(2)) / 6)


def test_clip_i_identical_and_orthogonal_sets():
    emb = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert M.clip_i(emb, emb) == pytest.approx(float((emb.double() @ emb.double().T).mean()))
    assert M.clip_i(emb[:1], emb[:1]) == pytest.approx(1.0)
    eye = torch.eye(4)
    assert M.clip_i(eye[:2], eye[2:]) == pytest.approx(0.0)
    assert M.dino_similarity(eye[:2], eye[:2]) == pytest.approx(0.5)  # diagonal 1s, off-diagonal 0s


def test_clip_t_hand_computed():
    gen = torch.tensor([[1.0, 0, 0], [0, 0, 1], [1, 1, 0]])
    text = torch.tensor([0.0, 0, 3])
    assert M.clip_t(text, gen) == pytest.approx(1 / 3)  # cosines 0, 1, 0
    assert M.clip_t(text[None], gen) == pytest.approx(1 / 3)
    per_image = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]])  # one prompt per image: cos 1, 0, 1/sqrt2
    assert M.clip_t(per_image, gen) == pytest.approx((1 + 1 / math.sqrt(2)) / 3)
    with pytest.raises(ValueError):
        M.clip_t(per_image[:2], gen)


@pytest.mark.parametrize("prompt, expected", [
    ("a photo of <tok> on the moon", "a photo of on the moon"),
    ("a photo of a <tok>", "a photo of"),
    ("an oil painting of the <tok>, 4k", "an oil painting of, 4k"),
    ("A <tok> tree in the forest", "A tree in the forest"),
    ("Elmo holding a <tok> <tok>_1 <tok>_2.", "Elmo holding."),
    ("a painting in the style of {}", "a painting in the style of"),
])
def test_strip_placeholder(prompt, expected):
    assert M.strip_placeholder(prompt, "{}" if "{}" in prompt else "<tok>") == expected


def test_missing_clip_weights_offer_eval_off(tmp_path):
    with pytest.raises(UserError, match=r"eval\.clip\.weights=.*or eval=off"):
        M.ClipScorer("ViT-B-32", str(tmp_path / "missing_clip.bin"))


def test_strip_placeholder_respects_word_boundaries_of_plain_words():
    assert M.strip_placeholder("a sks dog asks for a sks_1", "sks") == "a dog asks for"


# ---------------------------------------------------------------- CLIP (random ViT-B-32)

@pytest.fixture(scope="module")
def clip_scorer():
    return M.ClipScorer("ViT-B-32", weights=None)


def test_clip_scorer_unit_norm_right_dim_deterministic(clip_scorer):
    imgs = noise_images(2, seed=1) + [Image.new("L", (40, 90), 128)]  # odd size and mode go through preprocessing
    emb = clip_scorer.image_embeddings(imgs)
    assert emb.shape == (3, 512)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb, clip_scorer.image_embeddings(imgs))
    clip_scorer.batch_size = 2  # batching must not change the result
    try:
        assert torch.allclose(emb, clip_scorer.image_embeddings(imgs), atol=1e-5)
    finally:
        clip_scorer.batch_size = 32
    text = clip_scorer.text_embeddings(["a photo of on the moon", "a dog"])
    assert text.shape == (2, 512) and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert M.clip_i(emb[:1], emb[:1]) == pytest.approx(1.0)
    out = M.clip_metrics(clip_scorer, imgs[:1], imgs[1:], "a photo of a <tok>", "<tok>")
    assert out["clip_t_text"] == "a photo of a " and -1 <= out["clip_t"] <= 1 and -1 <= out["clip_i"] <= 1
    dropped = M.clip_metrics(clip_scorer, imgs[:1], imgs[1:], "a photo of a <tok>", "<tok>", mode="drop_article")
    assert dropped["clip_t_text"] == "a photo of"
    # the original code's literal removal: CLIP's tokenizer collapses the double space, so the text embeds the same
    assert torch.equal(clip_scorer.text_embeddings(["a photo of  on the moon"]),
                       clip_scorer.text_embeddings(["a photo of on the moon"]))


def test_clip_scorer_uses_openai_activation(clip_scorer):
    # open_clip's plain ViT-B-32 config has GELU; OpenAI's weights were trained with QuickGELU.
    assert type(clip_scorer.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_clip_scorer_loads_a_local_weights_file(tmp_path):
    source = M.ClipScorer("ViT-S-32", weights=None)  # small arch: the file round trip is what is tested
    path = tmp_path / "clip.pt"
    torch.save(source.model.state_dict(), path)
    loaded = M.ClipScorer("ViT-S-32", weights=str(path))
    imgs = noise_images(2, seed=2)
    assert torch.equal(source.image_embeddings(imgs), loaded.image_embeddings(imgs))


def test_clip_scorer_errors(tmp_path):
    missing = tmp_path / "nope" / "clip.safetensors"
    with pytest.raises(UserError, match=str(missing)):
        M.ClipScorer(weights=str(missing))
    with pytest.raises(UserError, match="ViT-B-32.*eval.clip.weights"):
        M.ClipScorer(weights="laion2b_s34b_b79k")  # a real tag, not cached, HF_HUB_OFFLINE=1
    wrong = tmp_path / "wrong.pt"
    torch.save({"foo": torch.zeros(2)}, wrong)
    with pytest.raises(UserError, match="eval.clip"):
        M.ClipScorer("ViT-S-32", weights=str(wrong))


# ---------------------------------------------------------------- DINO (random ViT-S/16)

def test_dino_scorer_random_and_local_file(tmp_path):
    source = M.DinoScorer(weights=None)
    imgs = noise_images(2, seed=3)
    emb = source.image_embeddings(imgs)
    assert emb.shape == (2, 384) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    path = tmp_path / "dino.pth"
    torch.save(source.model.state_dict(), path)
    assert torch.equal(M.DinoScorer(weights=str(path)).image_embeddings(imgs), emb)
    with pytest.raises(UserError, match="missing_dino.pth"):
        M.DinoScorer(weights=str(tmp_path / "missing_dino.pth"))


# ---------------------------------------------------------------- Inception (random weights of the real net)

@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> str:
    """torch-fidelity's Inception v3 with a seeded random initialisation (see textinv.models.random_weights)."""
    from textinv.models.random_weights import random_inception_weights

    return random_inception_weights(tmp_path_factory.mktemp("inception") / M.INCEPTION_WEIGHTS_FILE)


@pytest.fixture(scope="module")
def inception(inception_weights):
    return M.load_inception(inception_weights)


@pytest.fixture(scope="module")
def image_sets():
    return noise_images(5, seed=0), flat_images([10, 70, 130, 190, 250])


@pytest.fixture(scope="module")
def features(inception, image_sets):
    """One Inception pass per image, shared by the score tests (scoring itself is cheap)."""
    a, b = image_sets
    return M.inception_features(inception, a), M.inception_features(inception, b)


def test_inception_features_every_layer(features):
    a, _ = features
    assert {k: tuple(v.shape) for k, v in a.items()} == {
        "64": (5, 64), "192": (5, 192), "768": (5, 768), "2048": (5, 2048), "logits_unbiased": (5, 1008)}
    assert all(v.dtype == torch.float64 and torch.isfinite(v).all() for v in a.values())


@pytest.mark.parametrize("feature", [64, 192])  # 2048 works too, but its eigvals take ~10 s on CPU
def test_fid_self_is_zero_other_is_positive(features, feature, caplog):
    a, b = features
    with caplog.at_level(logging.WARNING, logger="textinv.evaluation.metrics"):
        same = M.inception_scores(a, a, feature=feature, kid_subsets=3)
    assert abs(same["fid"]) < 1e-3
    assert same["biased"] and "biased" in caplog.text  # 5 samples < feature dims
    # the fix offered is one that changes something: never the setting already in use
    assert ("eval.fid.feature=64" in caplog.text) == (feature != 64) and "KID" in caplog.text
    other = M.inception_scores(a, b, feature=feature, kid_subsets=3)
    assert other["fid"] > 1.0
    assert other["num_real"] == other["num_fake"] == 5 and other["feature"] == feature


def test_kid_is_the_unbiased_polynomial_mmd(features):
    """With the subset clamped to the whole (equal-size) sets, KID is exactly MMD^2_u with k = (x.y/d + 1)^3."""
    a, b = features
    x, y = a["64"], b["64"]
    k = lambda u, v: (u @ v.T / 64 + 1) ** 3
    m = x.shape[0]
    off_diagonal = lambda g: (g.sum() - g.diagonal().sum()) / (m * (m - 1))
    expected = off_diagonal(k(x, x)) + off_diagonal(k(y, y)) - 2 * k(x, y).mean()
    out = M.inception_scores(a, b, feature=64)
    assert out["kid_mean"] == pytest.approx(float(expected), rel=1e-9)
    assert out["kid_std"] == pytest.approx(0.0, abs=1e-9 * abs(float(expected)))


def test_end_to_end_matches_torchmetrics_own_fid(inception_weights, inception, image_sets):
    """Our shared-pass pipeline == torchmetrics' FrechetInceptionDistance class on the same images and weights."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = image_sets[0][:2], image_sets[1][:2]
    to_uint8 = lambda imgs: torch.stack([torch.from_numpy(np.asarray(i).copy()).permute(2, 0, 1) for i in imgs])
    reference = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=inception_weights)
    reference.update(to_uint8(a), real=True)
    reference.update(to_uint8(b), real=False)
    ours = M.inception_metrics(to_uint8(a), b, feature=64, extractor=inception, kid_subsets=3)  # tensors and PIL both accepted
    assert ours["fid"] == pytest.approx(float(reference.compute()), rel=1e-5)
    assert set(ours) >= {"fid", "kid_mean", "kid_std", "is_mean", "is_std", "num_real", "num_fake", "biased"}
    assert ours["is_splits"] == 1 and math.isnan(ours["is_std"])  # 2 generated images: one split, std undefined


def test_is_and_kid_are_seeded_and_leave_global_rng_alone(features):
    a, b = features
    b4 = {k: v[:4] for k, v in b.items()}  # 5 vs 4 images: KID draws real subsets, IS shuffles into 2 splits
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = M.inception_scores(a, b4, feature=64, seed=7, kid_subsets=3)
    assert torch.equal(torch.rand(1), expected_next)  # fork_rng restored the caller's generator
    second = M.inception_scores(a, b4, feature=64, seed=7, kid_subsets=3)
    for key in ("is_mean", "is_std", "kid_mean", "kid_std"):
        assert first[key] == second[key]
    assert first["is_mean"] >= 1.0 and first["is_splits"] == 2


def test_kid_subset_size_is_clamped(features, caplog):
    a, b = features
    b3 = {k: v[:3] for k, v in b.items()}
    with caplog.at_level(logging.WARNING, logger="textinv.evaluation.metrics"):
        out = M.inception_scores(a, b3, feature=64, kid_subset_size=1000, kid_subsets=5)
    assert out["kid_subset_size"] == 3
    assert "KID subset size 1000 clamped to 3" in caplog.text
    assert math.isfinite(out["kid_mean"]) and math.isfinite(out["kid_std"]) and out["kid_std"] > 0


def test_missing_inception_weights(tmp_path, image_sets, caplog, monkeypatch):
    a, b = image_sets
    missing = tmp_path / "absent" / M.INCEPTION_WEIGHTS_FILE
    with pytest.raises(UserError, match=f"{missing}.*eval.fid.weights"):
        M.inception_metrics(a, b, weights=missing)
    with caplog.at_level(logging.WARNING, logger="textinv.evaluation.metrics"):
        assert M.inception_metrics(a, b, weights=missing, optional=True) is None
    assert "skipping FID/KID/IS" in caplog.text and str(missing) in caplog.text
    # No explicit file, empty torch hub cache, offline: named file and config key, no download attempt.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=f"{M.INCEPTION_WEIGHTS_FILE}.*eval.fid.weights"):
        M.resolve_inception_weights(None)


def test_inception_weights_found_in_torch_hub_cache(tmp_path, monkeypatch, inception_weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / M.INCEPTION_WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.symlink_to(inception_weights)
    assert M.resolve_inception_weights(None, allow_download=False) == str(cached)


@pytest.mark.parametrize("content", ["garbage", "wrong_arch"])
def test_bad_inception_weights_file(tmp_path, content):
    path = tmp_path / "inception.pth"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save({"foo": torch.zeros(3)}, path)
    with pytest.raises(UserError, match=str(path)):
        M.load_inception(path)


def test_feature_must_be_an_inception_layer(image_sets):
    with pytest.raises(UserError, match="eval.fid.feature=100"):
        M.inception_metrics(*image_sets, feature=100)
