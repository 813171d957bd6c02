import open_clip
import pytest

from textinv.models.clip_tokenizer import VOCAB_SIZE, offline_clip_tokenizer

TEXTS = [
    "a photo of a cat",
    "A <deku-tree> tree in the forest",
    "Hello, World! dogs runnin'g  on thé moon 123",
    "an oil painting of Elmo holding a S*",
]


@pytest.fixture(scope="module")
def tok():
    return offline_clip_tokenizer()


def test_vocab_size_and_special_tokens(tok):
    assert len(tok) == VOCAB_SIZE
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407 and tok.pad_token_id == 49407


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_open_clip(tok, text):
    reference = open_clip.get_tokenizer("ViT-B-32")([text])[0]
    assert tok(text).input_ids == reference[reference != 0].tolist()


def test_known_ids(tok):
    # SD 1.x tokenizer ids for "a photo of a cat" (from its tokenizer/vocab.json)
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
