"""`<hypernet:name:multiplier>` in a prompt, read the way AUTOMATIC1111 reads its extra-network tags: the tag is
removed from the text, the multiplier defaults to 1, and several tags stack in the order they appear."""

from __future__ import annotations

import re

from textinv.errors import UserError

TAG = re.compile(r"<hypernet:([^:>]+)(?::([^>]*))?>")


def split_hypernet_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(the prompt without its tags, [(name, multiplier), ...] in prompt order)."""
    found: list[tuple[str, float]] = []
    for match in TAG.finditer(prompt):
        name, raw = match.group(1).strip(), match.group(2)
        try:
            multiplier = 1.0 if raw is None or not raw.strip() else float(raw)
        except ValueError:
            raise UserError(f"prompt {prompt!r}: the multiplier in {match.group(0)!r} is not a number; write e.g. "
                            f"<hypernet:{name}:0.8>") from None
        if multiplier != multiplier or abs(multiplier) == float("inf"):
            raise UserError(f"prompt {prompt!r}: the multiplier in {match.group(0)!r} must be finite")
        found.append((name, multiplier))
    text = re.sub(r"\s{2,}", " ", TAG.sub("", prompt)).strip(" ,")
    return text, found
