"""Run invariants: the placeholder must reach the text encoder, and every trained vector must move.

A placeholder past the encoder's window is truncated away: its vector gets no gradient and the run
would "finish" with the initial vector. Checked before training over every prompt the run can draw
(each template with each caption) and every evaluation prompt; after training, unchanged rows are named.
"""

from __future__ import annotations

import copy
import logging
from typing import Iterable

import torch

from textinv.errors import UserError
from textinv.methods.textual_inversion.placeholder import spell_out, vector_tokens

log = logging.getLogger(__name__)


def check_window(tokenizer, token: str, num_vectors: int, prompts: Iterable[str], what: str = "prompt") -> None:
    """Every placeholder id of every prompt must lie inside the window (start token + content + end token)."""
    tok = copy.deepcopy(tokenizer)  # the caller's tokenizer stays without the placeholder
    tokens = vector_tokens(token, num_vectors)
    tok.add_tokens(tokens)
    ids = set(tok.convert_tokens_to_ids(tokens))
    window = tok.model_max_length  # 77: position 0 is the start token, the last one the end token
    for prompt in dict.fromkeys(prompts):
        seq = tok(spell_out(prompt, tokens), add_special_tokens=True, truncation=False).input_ids
        positions = [i for i, t in enumerate(seq) if t in ids]
        if positions and positions[-1] > window - 2:
            shown = prompt if len(prompt) <= 100 else prompt[:97] + "..."
            raise UserError(f"the {what} {shown!r} puts the placeholder at token {positions[-1]}, past the text "
                            f"encoder's {window}-token window (its vector would never train); shorten the caption "
                            f"or use fewer method.num_vectors (now {num_vectors})")


def unchanged_rows(initial: torch.Tensor | None, final: torch.Tensor) -> list[int]:
    """Rows of the trained vectors bitwise equal to where they started."""
    if initial is None or initial.shape != final.shape:
        return []
    same = (initial.to(final.device, final.dtype) == final.detach()).all(dim=1)
    return [int(i) for i in torch.nonzero(same).flatten()]


def report_unchanged(rows: list[int], tokens: list[str], lr: float) -> str | None:
    """The warning for vectors that did not move (None when all moved)."""
    if not rows:
        return None
    names = ", ".join(tokens[i] for i in rows if i < len(tokens))
    msg = (f"vector(s) {names} did not change during training: no gradient reached them (the token never "
           f"reached the text encoder's window, or lr={lr:g} is too small for the precision)")
    log.warning(msg)
    return msg
