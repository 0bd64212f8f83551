"""Exact values of every gamma schedule against its documented formula, the registry and the builder's guards."""

import math

import pytest

from lpc_geom.train.schedules import (
    GAMMA_SCHEDULES,
    AdaptiveGamma,
    ConstantGamma,
    ExponentialGamma,
    ThresholdGamma,
    TwoRegimeGamma,
    build_gamma_schedule,
    lr_factor,
)


def test_registry_maps_each_name_to_its_class():
    assert {
        "exponential": ExponentialGamma,
        "two-regime": TwoRegimeGamma,
        "threshold": ThresholdGamma,
        "constant": ConstantGamma,
        "adaptive": AdaptiveGamma,
    } == GAMMA_SCHEDULES
    for name, cls in GAMMA_SCHEDULES.items():
        assert type(build_gamma_schedule(name)) is cls


def test_documented_defaults():
    assert ExponentialGamma() == ExponentialGamma(start=1e-2, factor=1.05, gamma_max=1e6, every=1)
    two = TwoRegimeGamma()
    assert (two.start, two.factor, two.every, two.switch, two.late_factor, two.gamma_max) == (
        1e-2, 2.0, 5, 1e3, 1.25, 1e6)
    thr = ThresholdGamma()
    assert (thr.threshold, thr.started_at, thr.start, thr.factor, thr.every) == (0.99, None, 1e-2, 1.05, 1)
    assert ConstantGamma().factor == 1.0


@pytest.mark.parametrize("epoch", [0, 1, 2, 3, 5, 6, 7, 11, 300])
def test_exponential_with_every_steps_by_floor_of_epoch_over_every(epoch):
    s = ExponentialGamma(start=0.5, factor=3.0, gamma_max=1e9, every=3)
    assert s(epoch) == pytest.approx(min(0.5 * 3.0 ** (epoch // 3), 1e9), rel=1e-12)


def test_exponential_cap_is_gamma_max_exactly():
    s = ExponentialGamma(start=1.0, factor=10.0, gamma_max=50.0)
    assert [s(e) for e in range(4)] == [1.0, 10.0, 50.0, 50.0]


def test_constant_is_start_at_every_epoch_whatever_factor_and_cap():
    s = ConstantGamma(start=0.3, factor=2.0, gamma_max=7.0, every=1)
    assert [s(e) for e in (0, 1, 10, 1000)] == [0.3, 0.3, 0.3, 0.3]
    built = build_gamma_schedule("constant", start=0.25)
    assert [built(e) for e in (0, 3, 999)] == [0.25, 0.25, 0.25]


def test_schedules_are_no_ops_on_observe_except_threshold():
    for s in (ExponentialGamma(), TwoRegimeGamma(), ConstantGamma()):
        before = [s(e) for e in range(0, 200, 7)]
        s.observe(0, 1.0)
        assert [s(e) for e in range(0, 200, 7)] == before


def _two_regime_formula(epoch, *, start, factor, every, switch, late_factor, gamma_max):
    step = epoch // every
    early = max(0, math.ceil(math.log(switch / start) / math.log(factor)))
    if step <= early:
        return min(start * factor**step, switch, gamma_max)
    return min(switch * late_factor ** (step - early), gamma_max)


@pytest.mark.parametrize("epoch", [0, 4, 5, 9, 10, 84, 85, 89, 90, 95, 100, 150, 200, 5000])
def test_two_regime_default_values_against_formula(epoch):
    s = TwoRegimeGamma()
    expected = _two_regime_formula(epoch, start=1e-2, factor=2.0, every=5, switch=1e3, late_factor=1.25,
                                   gamma_max=1e6)
    assert s(epoch) == pytest.approx(expected, rel=1e-12)


def test_two_regime_late_growth_is_a_power_of_late_factor():
    s = TwoRegimeGamma()
    # 2^17 * 1e-2 > 1e3 > 2^16 * 1e-2: 17 early steps; epoch 100 is step 20, three late steps
    assert s(100) == pytest.approx(1e3 * 1.25**3, rel=1e-12)
    assert s(150) == pytest.approx(1e3 * 1.25**13, rel=1e-12)
    # early steps: 1e-2 * 2^step, never above the switch
    assert s(5 * 16) == pytest.approx(1e-2 * 2**16, rel=1e-12)
    assert s(5 * 17) == 1e3


def test_two_regime_switch_reached_exactly_and_start_above_switch():
    # start * factor^3 == switch exactly: three early steps, then late growth from the switch
    s = TwoRegimeGamma(start=1.0, factor=2.0, every=1, switch=8.0, late_factor=3.0, gamma_max=1e9)
    assert [s(e) for e in range(7)] == [1.0, 2.0, 4.0, 8.0, 24.0, 72.0, 216.0]
    # start above the switch: no early step (max(0, ...)), late growth from the switch at once
    t = TwoRegimeGamma(start=16.0, factor=2.0, every=1, switch=8.0, late_factor=3.0, gamma_max=100.0)
    assert [t(e) for e in range(4)] == [8.0, 24.0, 72.0, 100.0]


def test_two_regime_gamma_max_below_switch_caps_early_growth():
    s = TwoRegimeGamma(start=1.0, factor=2.0, every=1, switch=100.0, late_factor=3.0, gamma_max=5.0)
    assert [s(e) for e in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize("every", [1, 3])
def test_threshold_formula_honours_every(every):
    s = ThresholdGamma(start=1.0, factor=2.0, gamma_max=1e9, every=every)
    s.observe(4, 0.995)  # default threshold 0.99
    assert s.started_at == 4
    for epoch in range(0, 20):
        expected = 1.0 if epoch <= 4 else min(2.0 ** ((epoch - 4) // every), 1e9)
        assert s(epoch) == expected, epoch


def test_threshold_default_is_099_inclusive():
    s = ThresholdGamma()
    s.observe(0, 0.98)
    assert s.started_at is None
    s.observe(1, 0.989999)
    assert s.started_at is None
    s.observe(2, 0.99)
    assert s.started_at == 2


def test_threshold_caps_at_gamma_max_and_waits_without_observation():
    s = ThresholdGamma(start=1.0, factor=10.0, gamma_max=500.0)
    assert [s(e) for e in (0, 10, 1000)] == [1.0, 1.0, 1.0]
    s.observe(0, 1.0)
    assert [s(e) for e in range(5)] == [1.0, 10.0, 100.0, 500.0, 500.0]


def test_state_dict_round_trip_restores_every_field():
    s = ThresholdGamma(start=0.2, factor=1.5, gamma_max=40.0, every=2, threshold=0.7)
    s.observe(6, 0.8)
    state = s.state_dict()
    assert state == {"start": 0.2, "factor": 1.5, "gamma_max": 40.0, "every": 2, "threshold": 0.7, "started_at": 6}
    restored = ThresholdGamma()
    restored.load_state_dict(state)
    assert restored == s
    two = TwoRegimeGamma(switch=50.0, late_factor=1.1)
    fresh = TwoRegimeGamma()
    fresh.load_state_dict(two.state_dict())
    assert fresh == two and [fresh(e) for e in range(0, 300, 10)] == [two(e) for e in range(0, 300, 10)]


def test_builder_passes_options_and_validates_bounds():
    s = build_gamma_schedule("two-regime", start=0.1, every=2, late_factor=1.5)
    assert (s.start, s.every, s.late_factor) == (0.1, 2, 1.5)
    # boundaries that are accepted: start == gamma_max, every == 1
    assert build_gamma_schedule("exponential", start=3.0, gamma_max=3.0, every=1)(10) == 3.0
    for bad in ({"start": 0.0}, {"start": -1.0}, {"start": 2.0, "gamma_max": 1.0}, {"every": 0}):
        with pytest.raises(ValueError, match="needs 0 < start <= gamma_max and every >= 1"):
            build_gamma_schedule("exponential", **bad)
    # started_at is state, not an option
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['started_at'\]"):
        build_gamma_schedule("threshold", started_at=3)
    with pytest.raises(ValueError, match="unknown gamma schedule 'cosine'; accepted: exponential, two-regime"):
        build_gamma_schedule("cosine")


@pytest.mark.parametrize(("epoch", "expected"), [(0, 1.0), (9, 1.0), (10, 0.5), (12, 0.5), (13, 0.25),
                                                 (15, 0.25), (16, 0.125), (40, 0.5**11)])
def test_lr_factor_formula(epoch, expected):
    assert lr_factor(epoch, halve_from=10, halve_every=3) == expected
