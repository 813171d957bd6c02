"""AUTOMATIC1111's schedule strings: what rate applies at which step, where training ends, one-line refusals."""

import pytest

from textinv.errors import UserError
from textinv.training.lr_schedule import parse_lr


def test_rates_apply_until_their_step_and_the_list_ends_training():
    s = parse_lr("5e-3:100, 1e-3:1000, 1e-5:1500")
    assert [s.rate_at(k) for k in (0, 99, 100, 999, 1000, 1499)] == [5e-3, 5e-3, 1e-3, 1e-3, 1e-5, 1e-5]
    assert s.end_step == 1500 and s.factor(100) == pytest.approx(0.2)


def test_a_bare_rate_or_minus_one_runs_to_the_end_and_numbers_stay_constant():
    assert parse_lr("1e-3:10, 1e-4").end_step is None and parse_lr("1e-3:10, 1e-4").rate_at(10**6) == 1e-4
    assert parse_lr("1e-3:10, 1e-4:-1").end_step is None
    assert parse_lr(5e-4).pieces == ((5e-4, None),) and parse_lr("5e-4").rate_at(7) == 5e-4


@pytest.mark.parametrize("bad, says", [
    ("fast", "does not parse"), ("1e-3:ten", "does not parse"), ("1e-3, 1e-4:100", "only the last entry"),
    ("1e-3:100, 1e-4:50", "increasing"), ("0:100", "positive"), ("-1e-3", "positive"), ("", "empty"),
    (True, "not a learning rate"), ("1e-3:10:20", "does not parse"),
])
def test_bad_schedules_are_one_line(bad, says):
    with pytest.raises(UserError, match=says) as err:
        parse_lr(bad)
    assert "\n" not in str(err.value) and "lr=" in str(err.value)
