"""Learning-rate schedules: closed-form values, warm-up, and progress measured in epochs so that
an epoch length that changes mid-run (dynamic selection after a full warm-up epoch) keeps the schedule."""
import math

import pytest

from leanrobust.config import OptimConfig
from leanrobust.schedule import lr_factor


def cfg(**kw) -> OptimConfig:
    return OptimConfig(**{"epochs": 10, **kw})


@pytest.mark.parametrize("epoch,expected", [(0, 1.0), (5, 0.1), (7, 0.1), (8, 0.01), (9, 0.01)])
def test_piecewise_milestones(epoch, expected):
    c = cfg(schedule="piecewise", milestones=[0.5, 0.75], gamma=0.1)
    assert lr_factor(c, epoch, 0, 100) == pytest.approx(expected)


def test_cosine_and_onecycle_closed_form():
    c = cfg(schedule="cosine")
    assert lr_factor(c, 0, 0, 50) == pytest.approx(1.0)
    assert lr_factor(c, 5, 0, 50) == pytest.approx(0.5)
    assert lr_factor(c, 9, 49, 50) == pytest.approx(0.5 * (1 + math.cos(math.pi * 499 / 500)))
    o = cfg(schedule="onecycle")
    assert lr_factor(o, 3, 0, 50) == pytest.approx(1.0)  # the peak at 30%
    assert lr_factor(o, 0, 0, 50) == pytest.approx(1e-3)  # floor at the start
    assert lr_factor(o, 6, 50 // 2, 50) == pytest.approx((1 - 0.65) / 0.7)


def test_warmup_ramps_linearly_over_its_epochs():
    c = cfg(schedule="constant", warmup_epochs=2)
    assert lr_factor(c, 0, 0, 10) == pytest.approx(1 / 20)
    assert lr_factor(c, 1, 9, 10) == pytest.approx(1.0)
    assert lr_factor(c, 2, 0, 10) == pytest.approx(1.0)


@pytest.mark.parametrize("schedule,warmup,ipe", [("constant", 0.5, 3), ("cosine", 1.5, 5), ("piecewise", 0.3, 7)])
def test_a_fractional_warmup_never_exceeds_the_schedule(schedule, warmup, ipe):
    c, plain = cfg(schedule=schedule, warmup_epochs=warmup), cfg(schedule=schedule)
    for it in range(3 * ipe):
        e, i = divmod(it, ipe)
        assert lr_factor(c, e, i, ipe) <= lr_factor(plain, e, i, ipe) + 1e-12
    assert lr_factor(c, 2, 0, ipe) == pytest.approx(lr_factor(plain, 2, 0, ipe))  # after the warm-up: the schedule


@pytest.mark.parametrize("schedule", ["piecewise", "cosine", "onecycle"])
def test_changing_epoch_length_keeps_the_schedule_in_epochs(schedule):
    """2 epochs on the full pool (100 batches), then a 30% subset (30 batches): the rate at the
    start of every epoch is the one of a fixed-length run, and the last batch is still before the end."""
    c = cfg(schedule=schedule)
    lengths = [100, 100] + [30] * 8
    for epoch, ipe in enumerate(lengths):
        assert lr_factor(c, epoch, 0, ipe) == pytest.approx(lr_factor(c, epoch, 0, 100))
        assert lr_factor(c, epoch, ipe // 2, ipe) == pytest.approx(lr_factor(c, epoch, 50, 100))  # mid-epoch
    last = lr_factor(c, 9, 29, 30)
    assert last == pytest.approx(lr_factor(c, 9, 99, 100), abs=0.02)
    if schedule == "cosine":
        assert 0 < last < 0.01
