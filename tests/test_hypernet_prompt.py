"""`<hypernet:name:m>` tags: removed from the prompt, multiplier 1 by default, stacked in order, bad ones one line."""

import pytest

from textinv.errors import UserError
from textinv.methods.hypernetwork.prompt_syntax import split_hypernet_tags


def test_tags_are_read_in_order_and_removed():
    text, tags = split_hypernet_tags("a house <hypernet:toy-dots:0.6> by the lake, <hypernet:ink>")
    assert text == "a house by the lake" and tags == [("toy-dots", 0.6), ("ink", 1.0)]
    assert split_hypernet_tags("a plain prompt") == ("a plain prompt", [])
    assert split_hypernet_tags("<hypernet:x:-0.5> a cat")[1] == [("x", -0.5)]


@pytest.mark.parametrize("bad", ["a <hypernet:x:strong> cat", "a <hypernet:x:nan> cat", "<hypernet:x:inf>"])
def test_a_multiplier_that_is_not_a_finite_number_is_one_line(bad):
    with pytest.raises(UserError, match="multiplier") as err:
        split_hypernet_tags(bad)
    assert "\n" not in str(err.value)
