"""AUTOMATIC1111's learning-rate schedule strings, for every method: `lr="5e-3:100, 1e-3:1000, 1e-5"`.

Each `rate:step` applies from the previous entry's step until `step`; a bare rate, or step -1, applies to the
end. When the last entry has a step, training ends there (AUTOMATIC1111 stops when its list ends); a plain number
is a constant rate, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from textinv.errors import UserError


@dataclass(frozen=True)
class RateSchedule:
    pieces: tuple[tuple[float, int | None], ...]  # (rate, end step or None for "to the end")

    @property
    def first_rate(self) -> float:
        return self.pieces[0][0]

    @property
    def end_step(self) -> int | None:
        """The step the list ends at (training stops there), or None when the last rate runs to the end."""
        return self.pieces[-1][1]

    def rate_at(self, step: int) -> float:
        for rate, end in self.pieces:
            if end is None or step < end:
                return rate
        return self.pieces[-1][0]

    def factor(self, step: int) -> float:
        """The multiplier of the first rate at `step` (what torch's LambdaLR wants)."""
        return self.rate_at(step) / self.first_rate


def parse_lr(value, key: str = "lr") -> RateSchedule:
    """A number or a schedule string -> RateSchedule; anything else is one line naming the key and the syntax."""
    if isinstance(value, bool):
        raise UserError(f"{key}={value!r} is not a learning rate; give a number such as 5e-4 or a schedule such "
                        "as '5e-3:100, 1e-3:1000, 1e-5'")
    if isinstance(value, (int, float)):
        pieces: list[tuple[float, int | None]] = [(float(value), None)]
    else:
        pieces = _parse_string(str(value), key)
    for rate, _ in pieces:
        if not (rate > 0 and rate < float("inf")):
            raise UserError(f"{key}={value!r}: every rate must be a positive finite number")
    ends = [end for _, end in pieces if end is not None]
    if any(b <= a for a, b in zip(ends, ends[1:])) or any(e <= 0 for e in ends):
        raise UserError(f"{key}={value!r}: the steps must be positive and increasing, e.g. '5e-3:100, 1e-3:1000'")
    return RateSchedule(tuple(pieces))


def _parse_string(text: str, key: str) -> list[tuple[float, int | None]]:
    pieces: list[tuple[float, int | None]] = []
    entries = [e.strip() for e in text.split(",") if e.strip()]
    for i, entry in enumerate(entries):
        parts = [p.strip() for p in entry.split(":")]
        try:
            rate = float(parts[0])
            end = None if len(parts) == 1 or parts[1] == "-1" else int(parts[1])
        except ValueError:
            raise UserError(f"{key}={text!r}: {entry!r} does not parse; write 'rate:step, rate:step, ...' such as "
                            "'5e-3:100, 1e-3:1000, 1e-5' (a bare rate or step -1 runs to the end)") from None
        if len(parts) > 2 or (end is None and i != len(entries) - 1):
            raise UserError(f"{key}={text!r}: {entry!r} does not parse; only the last entry may run to the end "
                            "(a bare rate or step -1)")
        pieces.append((rate, end))
    if not pieces:
        raise UserError(f"{key}={text!r} is empty; give a number such as 5e-4 or a schedule such as '5e-3:100, 1e-5'")
    return pieces
