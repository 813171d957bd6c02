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


def test_a_schedule_string_drives_training_and_its_end_must_match_steps(tmp_path, demo_images):
    import csv

    from conftest import compose, tiny_overrides
    from textinv.training.job import check_numbers, train

    with pytest.raises(UserError, match="ends training at step 4 but steps=6"):
        check_numbers(compose(*tiny_overrides(tmp_path / "x", demo_images, 6), "lr='1e-3:2, 1e-4:4'"))
    with pytest.raises(UserError, match="use one of them"):
        check_numbers(compose(*tiny_overrides(tmp_path / "x", demo_images, 4), "lr='1e-3:2, 1e-4:4'",
                              "module.optim.schedule=cosine"))
    run = tmp_path / "run"
    train(compose(*tiny_overrides(run, demo_images, 4), "lr='1e-3:2, 1e-4:4'", "trainer.log_every_n_steps=1",
                  "module.optim.scale_lr=false"))
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("lr")]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
