import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lpc_geom.train.schedules import (
    ExponentialGamma,
    ThresholdGamma,
    TwoRegimeGamma,
    build_gamma_schedule,
    lr_factor,
)


def test_exponential_matches_paper_formula_and_caps():
    s = ExponentialGamma()
    assert s(0) == pytest.approx(1e-2)
    assert s(10) == pytest.approx(1e-2 * 1.05**10)
    # 1e-2 * 1.05^e reaches 1e6 after ceil(log(1e8)/log(1.05)) = 378 epochs
    first_capped = math.ceil(math.log(1e8) / math.log(1.05))
    assert s(first_capped - 1) < 1e6
    assert s(first_capped) == 1e6 and s(5000) == 1e6


def test_two_regime_doubles_then_slows():
    s = TwoRegimeGamma()
    assert s(0) == pytest.approx(1e-2) and s(4) == pytest.approx(1e-2)
    assert s(5) == pytest.approx(2e-2)
    # 1e-2 * 2^17 > 1e3: capped at the switch, then x1.25 every 5 epochs
    assert s(5 * 17) == pytest.approx(1e3)
    assert s(5 * 18) == pytest.approx(1.25e3)
    assert s(10_000) == 1e6


@given(st.integers(0, 3000))
def test_schedules_are_monotone_and_bounded(epoch):
    for s in (ExponentialGamma(), TwoRegimeGamma(), ThresholdGamma(started_at=3)):
        assert s.start <= s(epoch) <= s(epoch + 1) <= s.gamma_max


def test_threshold_waits_for_accuracy_and_round_trips():
    s = ThresholdGamma(factor=2.0, threshold=0.9)
    s.observe(0, 0.5)
    assert s(1) == s.start and s(5) == s.start
    s.observe(3, 0.95)
    s.observe(4, 0.2)  # later dips do not restart the clock
    assert s.started_at == 3
    assert s(4) == pytest.approx(2 * s.start) and s(6) == pytest.approx(8 * s.start)
    restored = ThresholdGamma()
    restored.load_state_dict(s.state_dict())
    assert [restored(e) for e in range(10)] == [s(e) for e in range(10)]


def test_builder_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="accepted: exponential"):
        build_gamma_schedule("cosine")
    with pytest.raises(ValueError, match="accepted"):
        build_gamma_schedule("exponential", fator=1.1)
    with pytest.raises(ValueError, match="start <= gamma_max"):
        build_gamma_schedule("exponential", start=10.0, gamma_max=1.0)


def test_lr_halving():
    assert lr_factor(249, halve_from=250, halve_every=50) == 1.0
    assert lr_factor(250, halve_from=250, halve_every=50) == 0.5
    assert lr_factor(299, halve_from=250, halve_every=50) == 0.5
    assert lr_factor(300, halve_from=250, halve_every=50) == 0.25
