"""The adaptive gamma controller: each decision on constructed histories, its state, its validation split
and a tiny run (decisions recorded, a run stopped by a signal resumes exactly)."""

import json
import math
import os
import signal
import statistics

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lpc_geom.config import ConfigError, TrainConfig
from lpc_geom.data import load_dataset
from lpc_geom.train import TrainingStopped, train
from lpc_geom.train.schedules import (
    BACK_OFF,
    COOLING,
    GROW,
    GROWING,
    HOLD,
    HOLDING,
    RESUME,
    SETTLE_BACK_OFFS,
    WARM_UP,
    WARMING,
    AdaptiveGamma,
    build_gamma_schedule,
)
from lpc_geom.train.trainer import Trainer, validation_split

DATA = {"num_classes": 4, "dim": 16, "num_samples": 512, "separation": 4.0}
TINY = {"dataset": "blobs", "dataset_options": DATA, "backbone_options": {"hidden": [32, 32]}, "latent_dim": 8,
        "batch_size": 64, "progress": False}
DECISIONS = (WARM_UP, GROW, HOLD, BACK_OFF, RESUME)


def plain(**options):
    """A controller that judges the raw accuracy (smoothing 1: s_e = a_e, delay L = 0) of a 40-epoch run:
    growth until epoch 20, warm-up at most 10 epochs, plateau window max(patience, 2)."""
    settings = {"start": 1.0, "factor": 2.0, "tolerance": 0.01, "patience": 2, "smoothing": 1.0, **options}
    return build_gamma_schedule("adaptive", run_epochs=40, **settings)


def decisions(schedule, accuracies, first=0, samples=None):
    """(decision, gamma after it) for each validation accuracy in turn, from epoch ``first`` on."""
    out = []
    for epoch, accuracy in enumerate(accuracies, start=first):
        decision = schedule.observe_validation(epoch, accuracy, samples=samples)
        out.append((decision, schedule(epoch + 1)))
    return out


# a warm-up that plateaus at its fifth epoch: 0.5, 0.6, 0.7 rise by more than the floor, 0.705, 0.708 do not
WARM = [0.5, 0.6, 0.7, 0.705, 0.708]


def test_warm_up_holds_the_start_until_the_accuracy_plateaus_then_grows():
    s = plain()
    got = decisions(s, WARM)
    assert got == [(WARM_UP, 1.0)] * 4 + [(GROW, 2.0)]
    assert s.phase == GROWING and s.plateau == 0.7 and s.flat == 2


def test_the_warm_up_follows_the_training_accuracy_and_ends_with_the_best_reset():
    s = plain()
    pairs = [(0.5, 0.8), (0.6, 0.7), (0.7, 0.72), (0.705, 0.7), (0.708, 0.69)]  # validation peaks first
    got = []
    for epoch, (train_accuracy, accuracy) in enumerate(pairs):
        s.observe(epoch, train_accuracy)
        got.append((s.observe_validation(epoch, accuracy), s(epoch + 1)))
    # the validation accuracy alone, falling from 0.8, would have ended the warm-up at epoch 2
    assert got == [(WARM_UP, 1.0)] * 4 + [(GROW, 2.0)] and s.plateau == 0.7
    assert s.best == 0.69  # judged from the level the fit reached, not the early peak 0.8
    assert decisions(s, [0.685, 0.685], first=5) == [(GROW, 4.0), (GROW, 8.0)]
    with pytest.raises(ValueError, match="training accuracy must be a fraction"):
        s.observe(7, 1.5)


def test_an_early_dip_while_the_accuracy_still_rises_is_no_loss():
    # the spirals case: a dip of 15 points in the first epochs, while the accuracy rises, leaves gamma alone
    s = plain()
    got = decisions(s, [0.4, 0.55, 0.4, 0.6, 0.7])
    assert [d for d, _ in got] == [WARM_UP] * 5 and s(5) == 1.0 and s.back_offs == 0


def test_warm_up_ends_at_half_the_growth_window_even_while_rising():
    s = plain()
    got = decisions(s, [0.3 + 0.05 * e for e in range(10)])  # rises 5 points every epoch
    assert got == [(WARM_UP, 1.0)] * 9 + [(GROW, 2.0)]  # epoch 9: 10 epochs done = ceil(20 / 2)


def test_grows_by_the_step_while_within_tolerance_of_the_best():
    s = plain()
    decisions(s, WARM)
    got = decisions(s, [0.70, 0.72, 0.711, 0.73], first=5)  # 0.711 is within 0.01 of the best 0.72
    assert got == [(GROW, 4.0), (GROW, 8.0), (GROW, 16.0), (GROW, 32.0)]
    assert s.best == 0.73 and s.good_gamma == 16.0


def test_a_dip_shorter_than_patience_holds_and_growth_goes_on():
    s = plain()
    decisions(s, WARM)
    got = decisions(s, [0.70, 0.65, 0.70], first=5)
    assert got == [(GROW, 4.0), (HOLD, 4.0), (GROW, 8.0)]
    assert s.below == 0 and s.back_offs == 0


def test_back_off_returns_to_the_good_gamma_shrinks_the_step_then_resumes():
    s = plain()
    decisions(s, WARM)
    got = decisions(s, [0.70, 0.65, 0.65], first=5)
    assert got == [(GROW, 4.0), (HOLD, 4.0), (BACK_OFF, 2.0)]  # the good gamma: 2, where 0.70 held
    assert s.step == pytest.approx(math.sqrt(2.0)) and s.back_offs == 1 and s.phase == COOLING
    # the cool-down is L + 1 = 1 epoch here: the next epoch is judged; it holds: growth resumes by sqrt(2)
    assert decisions(s, [0.70], first=8) == [(RESUME, pytest.approx(2.0 * math.sqrt(2.0)))]
    assert s.phase == GROWING


def test_the_cool_down_lasts_the_smoothing_delay_plus_one():
    s = plain(smoothing=0.5)  # L = ceil(0.5 / 0.5) = 1: two epochs held after a back-off
    assert s.lag == 1
    decisions(s, [0.7] * 3)  # flat: warm-up ends at epoch 2 (plateau window 2)
    assert s(3) == 2.0
    got = decisions(s, [0.7, 0.5, 0.5, 0.5, 0.9], first=3)
    # s: 0.7, 0.6, 0.55 (below 0.69 twice: back off to the smallest gamma of the last L + 1 = 2 epochs when
    # 0.7 last held, epochs 2 and 3: 1), then 0.525 is not judged (cool-down), 0.7125 is and holds
    assert got == [(GROW, 4.0), (HOLD, 4.0), (BACK_OFF, 1.0), (HOLD, 1.0),
                   (RESUME, pytest.approx(math.sqrt(2.0)))]


def test_a_back_off_without_growth_before_it_divides_by_the_initial_step_and_keeps_the_step():
    s = plain()
    decisions(s, WARM)
    got = decisions(s, [0.70, 0.6, 0.6, 0.6, 0.6], first=5)
    # an overshoot: back to the good gamma 2, step sqrt(2); not recovered after the cool-down: no growth to
    # undo, a fall outside the bracket: gamma / f_0 (2), the line search's step unchanged
    assert got == [(GROW, 4.0), (HOLD, 4.0), (BACK_OFF, 2.0), (HOLD, 2.0), (BACK_OFF, pytest.approx(1.0))]
    assert s.step == pytest.approx(math.sqrt(2.0)) and s.back_offs == 2 and s.brackets == 1 and s.falls == 1
    early = plain()
    decisions(early, WARM)  # growth began at gamma 2; the good gamma is the start, 1
    got = decisions(early, [0.6] * 4, first=5)
    assert got == [(HOLD, 2.0), (BACK_OFF, 1.0), (HOLD, 1.0), (BACK_OFF, pytest.approx(0.5))]
    assert early(9) < early.start  # an accuracy that keeps falling takes gamma below the start


def test_a_fall_that_persists_doubles_the_back_off_in_log_gamma_and_a_hold_resets_it():
    s = plain()
    decisions(s, WARM)
    decisions(s, [0.7] * 16, first=5)  # grown to 2^15, held past the window
    held = s(21)
    # never recovering: the j-th consecutive back-off divides by f_0^(2^j) = 2, 4, 16
    got = decisions(s, [0.6] * 6, first=21)
    assert got == [(HOLD, held), (BACK_OFF, held / 2), (HOLD, held / 2), (BACK_OFF, held / 8),
                   (HOLD, held / 8), (BACK_OFF, held / 128)]
    assert s.falls == 3
    # an epoch that holds ends the run of falls: the next fall divides by f_0 again
    got = decisions(s, [0.7, 0.6, 0.6], first=27)
    assert got == [(HOLD, held / 128), (HOLD, held / 128), (BACK_OFF, held / 256)] and s.falls == 1


def test_at_the_gamma_floor_a_fall_resets_the_best_instead_of_backing_off():
    s = plain()
    assert s.gamma_floor() == pytest.approx(2.0 ** -20)  # start / f_0^(E_g), E_g = 20
    decisions(s, WARM)
    got = decisions(s, [0.6] * 14, first=5)  # back to 1, then / 2, 4, 16, 256, then capped at the floor
    gammas = [g for d, g in got if d == BACK_OFF]
    assert gammas == pytest.approx([1.0, 0.5, 0.125, 2.0 ** -7, 2.0 ** -15, 2.0 ** -20])
    assert s.back_offs == 6
    # at the floor the penalty is not what costs accuracy: the level reached becomes the best, gamma stays
    assert decisions(s, [0.6, 0.6], first=19) == [(HOLD, 2.0 ** -20)] * 2
    assert s.best == pytest.approx(0.6) and s.back_offs == 6 and s.below == 0


def test_growth_settles_after_the_back_offs_and_stops_at_the_growth_window():
    s = plain()
    decisions(s, WARM)
    for k in range(SETTLE_BACK_OFFS):  # a loss at every new gamma, recovered at once after each back-off
        first = 5 + 4 * k
        got = decisions(s, [0.70, 0.6, 0.6, 0.70], first=first)
        assert [d for d, _ in got] == [GROW, HOLD, BACK_OFF, HOLD if k == SETTLE_BACK_OFFS - 1 else RESUME]
        assert s.back_offs == k + 1
    assert s.phase == HOLDING
    settled = s(17)
    assert decisions(s, [0.71, 0.72], first=17) == [(HOLD, settled)] * 2  # holds even above the best
    late = plain()
    decisions(late, WARM)
    got = decisions(late, [0.7] * 16, first=5)  # epochs 5..20: growth while fewer than 20 epochs are done
    assert [d for d, _ in got] == [GROW] * 14 + [HOLD] * 2 and late.phase == HOLDING
    assert late(21) == 2.0 ** 15


def test_a_fall_while_gamma_is_held_still_backs_off():
    s = plain()
    decisions(s, WARM)
    decisions(s, [0.7] * 16, first=5)
    held = s(21)
    got = decisions(s, [0.6, 0.6], first=21)
    assert got == [(HOLD, held), (BACK_OFF, held / 2.0)]  # never backed off before: the step is still 2
    assert decisions(s, [0.7, 0.7], first=23) == [(HOLD, held / 2.0)] * 2  # past the window: no resumption


def test_every_grows_only_on_every_kth_observation_and_gamma_max_caps():
    s = plain(every=2, gamma_max=3.0)
    got = decisions(s, [*WARM, 0.7, 0.7, 0.7])
    assert [d for d, _ in got] == [WARM_UP] * 4 + [HOLD, GROW, HOLD, GROW]  # observation 5 is odd
    assert s(8) == 3.0
    capped = plain(gamma_max=3.0)
    assert decisions(capped, [*WARM, 0.7, 0.7])[-2:] == [(GROW, 3.0), (HOLD, 3.0)]


def test_the_initial_step_is_the_papers_rate_stretched_to_the_run():
    s = build_gamma_schedule("adaptive", run_epochs=100)
    assert s.factor is None and s.growth_epochs() == 50
    assert s.initial_step() == pytest.approx(1.05 ** 2)  # 1.05^(200 / 100)
    assert build_gamma_schedule("adaptive", run_epochs=200).initial_step() == pytest.approx(1.05)
    assert build_gamma_schedule("adaptive", run_epochs=100, factor=1.3).initial_step() == 1.3
    assert build_gamma_schedule("adaptive", run_epochs=33, grow_until=0.3).growth_epochs() == 10
    assert build_gamma_schedule("adaptive", run_epochs=100).lag == 3  # ceil(0.7 / 0.3)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(1, 5000), st.floats(0, 0.2),
       st.floats(0.05, 1.0))
def test_smoothing_best_and_tolerance_follow_their_formulas(accuracies, samples, floor, alpha):
    s = build_gamma_schedule("adaptive", run_epochs=40, tolerance=floor, smoothing=alpha)
    smoothed = best = None
    smoothed_list = []  # s_0, s_1, ...: the innovation of epoch e is a_e - s_{e-1}
    for epoch, accuracy in enumerate(accuracies):
        warming = s.phase == WARMING
        s.observe_validation(epoch, accuracy, samples=samples)
        smoothed = accuracy if smoothed is None else smoothed + alpha * (accuracy - smoothed)
        best = smoothed if best is None else max(best, smoothed)
        if warming and s.phase != WARMING:  # the end of the warm-up resets the best to the level reached
            best = smoothed
        expected = 2.0 * math.sqrt(best * (1 - best) / samples) * math.sqrt(alpha / (2 - alpha))
        innovations = [a - b for a, b in zip(accuracies[1:epoch + 1], smoothed_list, strict=False)][-4:]
        if len(innovations) >= 4:  # W = max(3, ceil(40 / 10)): the measured noise caps the binomial bound
            expected = min(expected, 2.0 * math.sqrt(alpha / 2 * statistics.variance(innovations)))
        expected = max(floor, expected)
        smoothed_list.append(smoothed)
        assert s.smoothed == pytest.approx(smoothed, abs=1e-12) and s.best == pytest.approx(best, abs=1e-12)
        assert s.last_tolerance == pytest.approx(expected, rel=1e-9, abs=1e-12) and s.last_tolerance >= floor
    assert plain(tolerance=0.03).tolerance_for(1.0, 10) == 0.03  # r = 1: no noise term
    assert plain().tolerance_for(0.5, None) == 0.01  # an exact accuracy: the floor


def test_a_dip_within_the_noise_of_a_small_split_grows_and_a_large_split_backs_off():
    # best 0.8 on 240 samples: 2 standard errors = 2 sqrt(0.16 / 240) = 0.0516 (smoothing 1); a 3-point dip is
    # noise there, but beyond the tolerance on 24,000 samples (0.0052, floor 0.01)
    # (before W = 4 innovations exist, the binomial bound alone)
    small, large = plain(), plain()
    flat = [0.8] * 3
    assert [d for d, _ in decisions(small, [*flat, 0.77], samples=240)] == [WARM_UP] * 2 + [GROW] * 2
    assert small.last_tolerance == pytest.approx(2 * (0.8 * 0.2 / 240) ** 0.5)
    assert [d for d, _ in decisions(large, [*flat, 0.77, 0.77], samples=24_000)] == [WARM_UP] * 2 + [
        GROW, HOLD, BACK_OFF]
    assert large.last_tolerance == 0.01


def test_a_split_that_measures_steady_judges_a_dip_by_its_measured_noise_not_the_binomial_bound():
    # the same 240 samples, but six epochs without a change: the innovations of the last W = 4 epochs,
    # 0, 0, 0, -0.03, have variance 2.25e-4: tolerance 2 sqrt(0.5 * 2.25e-4) = 0.0212 < 0.0516, so the
    # 3-point dip is a loss
    steady = plain()
    got = [d for d, _ in decisions(steady, [0.8] * 6 + [0.77, 0.77], samples=240)]
    assert got == [WARM_UP] * 2 + [GROW] * 4 + [HOLD, BACK_OFF]
    assert steady.last_tolerance == pytest.approx(2 * math.sqrt(0.5 * statistics.variance([0, 0, -0.03, 0])))
    assert steady.noise_window() == 4 and build_gamma_schedule("adaptive", run_epochs=100).noise_window() == 10


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(0, 39), st.sampled_from([None, 50, 900]))
def test_state_dict_round_trip_continues_identically(accuracies, cut, samples):
    cut = min(cut, len(accuracies))
    options = {"start": 1e-2, "gamma_max": 10.0, "tolerance": 0.02, "patience": 2}
    s = build_gamma_schedule("adaptive", run_epochs=40, **options)
    decisions(s, accuracies[:cut], samples=samples)
    restored = build_gamma_schedule("adaptive", run_epochs=7, **options)  # the checkpoint's length wins
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))  # survives JSON (and the checkpoint)
    assert restored == s
    rest = accuracies[cut:]
    assert decisions(restored, rest, first=cut, samples=samples) == decisions(s, rest, first=cut, samples=samples)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=80), st.integers(2, 80))
def test_gamma_stays_bounded_grows_only_in_its_window_and_never_after_settling(accuracies, epochs):
    s = build_gamma_schedule("adaptive", run_epochs=epochs, start=1e-2, factor=3.0, gamma_max=5.0,
                             smoothing=0.5, patience=1)
    for epoch, accuracy in enumerate(accuracies):
        before, backs = s(epoch), s.back_offs
        decision = s.observe_validation(epoch, accuracy)
        after = s(epoch + 1)
        assert decision in DECISIONS and 0 < after <= s.gamma_max
        if decision in (GROW, RESUME):
            assert after > before and epoch + 1 < s.growth_epochs() and s.brackets < SETTLE_BACK_OFFS
        elif decision == BACK_OFF:
            assert after <= before and s.back_offs == backs + 1
        else:
            assert after == before
        if decision == WARM_UP:
            assert s.phase == WARMING and after == s.start


def test_options_are_validated_and_state_is_not_an_option():
    assert TrainConfig().gamma_schedule == "adaptive"
    with pytest.raises(ConfigError, match="validation_fraction"):
        TrainConfig(gamma_options={"validation_fraction": 1.5})
    with pytest.raises(ConfigError, match=r"unknown key.*'phase'") as info:
        TrainConfig(gamma_options={"phase": "holding"})
    assert str(info.value).endswith("accepted: start, factor, gamma_max, every, tolerance, patience, "
                                    "validation_fraction, smoothing, grow_until")
    for bad in ({"patience": 0}, {"smoothing": 0.0}, {"grow_until": 1.5}, {"factor": 0.9}):
        with pytest.raises(ValueError, match="patience >= 1, 0 < smoothing <= 1, 0 < grow_until <= 1"):
            build_gamma_schedule("adaptive", **bad)
    with pytest.raises(ValueError, match="run_epochs must be a positive integer"):
        build_gamma_schedule("adaptive", run_epochs=0)
    assert build_gamma_schedule("exponential", run_epochs=5) == build_gamma_schedule("exponential")
    with pytest.raises(ValueError, match="fraction in"):
        plain().observe_validation(0, float("nan"))
    with pytest.raises(ValueError, match="positive integer"):
        plain().observe_validation(0, 0.5, samples=0)
    with pytest.raises(ValueError, match="positive integer"):
        plain().observe_validation(0, 0.5, samples=True)
    with pytest.raises(ValueError, match="needs the run's length"):
        AdaptiveGamma().observe_validation(0, 0.5)


def test_validation_split_is_seeded_stratified_and_disjoint():
    labels = torch.arange(200) % 4
    train_a, val_a = validation_split(labels, 0.1, seed=7)
    train_b, val_b = validation_split(labels, 0.1, seed=7)
    _, val_c = validation_split(labels, 0.1, seed=8)
    assert torch.equal(val_a, val_b) and torch.equal(train_a, train_b)
    assert not torch.equal(val_a.sort().values, val_c.sort().values)
    assert set(train_a.tolist()).isdisjoint(val_a.tolist())
    assert sorted(train_a.tolist() + val_a.tolist()) == list(range(200))
    assert torch.bincount(labels[val_a]).tolist() == [5, 5, 5, 5]


def test_trainer_holds_out_training_samples_not_test_samples_and_gives_the_run_length(tmp_path):
    data = load_dataset("blobs", **DATA)
    trainer = Trainer(TrainConfig(**TINY, epochs=7, seed=3, out_dir=str(tmp_path / "r")), dataset=data)
    assert trainer.gamma.run_epochs == 7
    x_val, y_val = trainer.validation
    assert len(y_val) + len(trainer.data.y_train) == len(data.y_train)
    assert len(y_val) == pytest.approx(0.1 * len(data.y_train), abs=DATA["num_classes"])
    assert torch.equal(trainer.data.x_test, data.x_test)
    original = {tuple(row.tolist()) for row in data.x_train}
    kept = {tuple(row.tolist()) for row in trainer.data.x_train}
    held = {tuple(row.tolist()) for row in x_val}
    assert held <= original and kept.isdisjoint(held) and kept | held == original
    paper = Trainer(TrainConfig(**TINY, epochs=1, gamma_schedule="exponential", out_dir=str(tmp_path / "p")),
                    dataset=data)
    assert paper.validation is None and paper.data is data


def test_tiny_run_records_decisions_and_a_run_stopped_by_a_signal_resumes_exactly(tmp_path, monkeypatch):
    # 6 epochs: growth window 3 epochs, warm-up at most 2
    config = TrainConfig(**TINY, epochs=6, checkpoint_every=1, gamma_options={"factor": 3.0},
                         out_dir=str(tmp_path / "full"))
    full = train(config)
    got = [r["gamma_decision"] for r in full.history]
    assert got[:2] == [WARM_UP, GROW] and set(got) <= set(DECISIONS) and GROW not in got[2:]
    for before, after in zip(full.history[:-1], full.history[1:], strict=True):  # a decision sets the next gamma
        assert after["gamma"] == before["gamma_next"]
        if before["gamma_decision"] == GROW:
            assert after["gamma"] == pytest.approx(3.0 * before["gamma"])
    n = json.loads((tmp_path / "full" / "summary.json").read_text())["validation_samples"]
    smoothed = best = None
    innovations = []
    for row in full.history:
        assert 0 <= row["val_acc"] <= 1
        if smoothed is not None:
            innovations = [*innovations, row["val_acc"] - smoothed][-3:]  # W = max(3, ceil(6 / 10))
        smoothed = row["val_acc"] if smoothed is None else smoothed + 0.3 * (row["val_acc"] - smoothed)
        best = smoothed if best is None else max(best, smoothed)
        tau = 2 * math.sqrt(best * (1 - best) / n) * math.sqrt(0.3 / 1.7)
        if len(innovations) == 3:
            tau = min(tau, 2 * math.sqrt(0.3 / 2 * statistics.variance(innovations)))
        tau = max(0.01, tau)
        assert row["gamma_tolerance"] == pytest.approx(tau)
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["validation_fraction"] == 0.1 and summary["validation_seed"] == 0
    assert summary["validation_samples"] + summary["train_samples"] == load_dataset("blobs", **DATA).num_train
    csv_header = (tmp_path / "full" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_acc", "gamma_decision", "gamma_next", "gamma_tolerance"} <= set(csv_header)

    # a real signal after the third epoch's validation stops the run; resumed, it takes the same steps
    observe = AdaptiveGamma.observe_validation

    def signalling(self, epoch, accuracy, samples=None):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return observe(self, epoch, accuracy, samples)

    monkeypatch.setattr(AdaptiveGamma, "observe_validation", signalling)
    with pytest.raises(TrainingStopped):
        train(config.replace(out_dir=str(tmp_path / "resumed")), stop_signals=(signal.SIGUSR1,))
    monkeypatch.setattr(AdaptiveGamma, "observe_validation", observe)
    resumed = train(config.replace(out_dir=str(tmp_path / "resumed")), resume=True)
    drop = {"epoch_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in full.history]
