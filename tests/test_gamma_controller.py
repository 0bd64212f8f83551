"""The adaptive gamma controller: its decisions, its state, its validation split and a tiny run."""

import json
import shutil

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lpc_geom.config import ConfigError, TrainConfig
from lpc_geom.data import load_dataset
from lpc_geom.train import train
from lpc_geom.train.schedules import BACK_OFF, GROW, HOLD, AdaptiveGamma, build_gamma_schedule
from lpc_geom.train.trainer import Trainer, validation_split

DATA = {"num_classes": 4, "dim": 16, "num_samples": 512, "separation": 4.0}
TINY = {"dataset": "blobs", "dataset_options": DATA, "backbone_options": {"hidden": [32, 32]}, "latent_dim": 8,
        "batch_size": 64, "progress": False}


def decisions(schedule, accuracies):
    """(decision, gamma after it) for each validation accuracy in turn."""
    out = []
    for epoch, accuracy in enumerate(accuracies):
        decision = schedule.observe_validation(epoch, accuracy)
        out.append((decision, schedule(epoch + 1)))
    return out


def test_grows_while_within_tolerance_of_the_best():
    s = AdaptiveGamma(start=1.0, factor=2.0, tolerance=0.01)
    # rising, flat, and a dip of 0.005 (< tolerance): every epoch grows
    got = decisions(s, [0.5, 0.7, 0.7, 0.695, 0.71])
    assert [d for d, _ in got] == [GROW] * 5
    assert [g for _, g in got] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert s.best == 0.71 and s.good_gamma == 16.0 and not s.stopped


def test_backs_off_after_patience_epochs_below_tolerance_and_stops_growing():
    s = AdaptiveGamma(start=1.0, factor=2.0, tolerance=0.01, patience=2)
    got = decisions(s, [0.8, 0.9, 0.85, 0.84, 0.95, 0.95])
    # 0.8 grow (->2), 0.9 grow (->4, good 2), 0.85 below 0.89: hold at 4, 0.84 again: back to good gamma 2;
    # afterwards, even above the best, gamma stays
    assert got == [(GROW, 2.0), (GROW, 4.0), (HOLD, 4.0), (BACK_OFF, 2.0), (HOLD, 2.0), (HOLD, 2.0)]
    assert s.stopped and s.best == 0.95
    # a later drop does not back off again
    assert decisions(s, [0.1, 0.1, 0.1]) == [(HOLD, 2.0)] * 3


def test_a_dip_shorter_than_patience_holds_then_growth_resumes():
    s = AdaptiveGamma(start=1.0, factor=2.0, tolerance=0.01, patience=3)
    got = decisions(s, [0.9, 0.8, 0.85, 0.9])
    assert got == [(GROW, 2.0), (HOLD, 2.0), (HOLD, 2.0), (GROW, 4.0)]
    assert s.below == 0 and not s.stopped


def test_back_off_before_any_good_epoch_returns_to_start_and_gamma_max_caps_growth():
    s = AdaptiveGamma(start=0.5, factor=10.0, gamma_max=20.0, tolerance=0.0, patience=1)
    assert decisions(s, [0.5, 0.6, 0.7]) == [(GROW, 5.0), (GROW, 20.0), (HOLD, 20.0)]
    assert decisions(s, [0.2]) == [(BACK_OFF, 20.0)]  # good gamma is the cap, where 0.7 was reached
    first = AdaptiveGamma(start=0.5, patience=1)
    first.best = 1.0  # constructed: a best no epoch of this gamma reached
    assert first.observe_validation(0, 0.5) == BACK_OFF and first(1) == 0.5


def test_every_grows_only_on_every_kth_good_observation():
    s = AdaptiveGamma(start=1.0, factor=2.0, every=2)
    assert decisions(s, [0.5, 0.6, 0.7, 0.8]) == [(HOLD, 1.0), (GROW, 2.0), (HOLD, 2.0), (GROW, 4.0)]


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(0, 39))
def test_state_dict_round_trip_continues_identically(accuracies, cut):
    cut = min(cut, len(accuracies))
    s = AdaptiveGamma(start=1e-2, factor=1.5, gamma_max=10.0, tolerance=0.02, patience=2)
    decisions(s, accuracies[:cut])
    restored = build_gamma_schedule("adaptive", start=1e-2, factor=1.5, gamma_max=10.0, tolerance=0.02, patience=2)
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))  # survives JSON (and the checkpoint)
    rest = accuracies[cut:]
    assert decisions(restored, rest) == decisions(s, rest)
    assert s.start <= s(0) <= s.gamma_max


@given(st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_gamma_stays_bounded_and_constant_once_stopped(accuracies):
    s = AdaptiveGamma(start=1e-2, factor=3.0, gamma_max=5.0, tolerance=0.01, patience=1)
    gammas, stopped_at = [], None
    for epoch, accuracy in enumerate(accuracies):
        decision = s.observe_validation(epoch, accuracy)
        gammas.append(s(epoch + 1))
        if decision == BACK_OFF:
            assert stopped_at is None
            stopped_at = epoch
    assert all(s.start <= g <= s.gamma_max for g in gammas)
    if stopped_at is not None:
        assert len(set(gammas[stopped_at:])) == 1


def test_options_are_validated_and_state_is_not_an_option():
    assert TrainConfig().gamma_schedule == "adaptive"
    with pytest.raises(ConfigError, match="validation_fraction"):
        TrainConfig(gamma_options={"validation_fraction": 1.5})
    with pytest.raises(ConfigError, match=r"unknown key.*'stopped'") as info:
        TrainConfig(gamma_options={"stopped": True})
    assert str(info.value).endswith("accepted: start, factor, gamma_max, every, tolerance, patience, "
                                    "validation_fraction")
    with pytest.raises(ValueError, match="patience >= 1"):
        build_gamma_schedule("adaptive", patience=0)
    with pytest.raises(ValueError, match="fraction in"):
        AdaptiveGamma().observe_validation(0, float("nan"))


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


def test_trainer_holds_out_training_samples_not_test_samples(tmp_path):
    data = load_dataset("blobs", **DATA)
    trainer = Trainer(TrainConfig(**TINY, epochs=1, seed=3, out_dir=str(tmp_path / "r")), dataset=data)
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


def test_tiny_run_records_decisions_and_resumes_exactly(tmp_path):
    config = TrainConfig(**TINY, epochs=4, checkpoint_every=1, gamma_options={"factor": 3.0},
                         out_dir=str(tmp_path / "full"))
    full = train(config)
    assert [r["gamma_decision"] for r in full.history] and all(
        r["gamma_decision"] in (GROW, HOLD, BACK_OFF) and 0 <= r["val_acc"] <= 1 for r in full.history)
    for before, after in zip(full.history[:-1], full.history[1:], strict=True):  # a decision sets the next gamma
        assert after["gamma"] == before["gamma_next"]
        if before["gamma_decision"] == GROW:
            assert after["gamma"] == pytest.approx(3.0 * before["gamma"])
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["validation_fraction"] == 0.1 and summary["validation_seed"] == 0
    assert summary["validation_samples"] + summary["train_samples"] == load_dataset("blobs", **DATA).num_train
    csv_header = (tmp_path / "full" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_acc", "gamma_decision", "gamma_next"} <= set(csv_header)

    train(config.replace(epochs=2, out_dir=str(tmp_path / "half")))
    shutil.copytree(tmp_path / "half", tmp_path / "resumed")
    resumed = train(config.replace(out_dir=str(tmp_path / "resumed")), resume=True)
    drop = {"epoch_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in full.history]


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.integers(1, 5000), st.floats(0, 0.2))
def test_tolerance_is_the_floor_or_two_standard_errors_of_the_best(accuracies, samples, floor):
    s = AdaptiveGamma(start=1e-2, factor=1.5, gamma_max=10.0, tolerance=floor, patience=2)
    best = None
    for epoch, accuracy in enumerate(accuracies):
        below_before, gamma_before = s.below, s(epoch)
        decision = s.observe_validation(epoch, accuracy, samples=samples)
        best = accuracy if best is None else max(best, accuracy)
        expected = max(floor, 2.0 * (best * (1.0 - best) / samples) ** 0.5)
        assert s.last_tolerance == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert s.last_tolerance >= floor
        if accuracy >= best - expected:  # within the tolerance: never counted as a drop
            assert s.below == 0 and decision in (GROW, HOLD)
        else:
            assert s.below == below_before + 1 and decision in (HOLD, BACK_OFF)
            if decision == HOLD:
                assert s(epoch + 1) == gamma_before


def test_a_dip_within_the_noise_of_a_small_split_grows_and_a_large_split_backs_off():
    # best 0.8 on 240 samples: 2 standard errors = 2 sqrt(0.16 / 240) = 0.0516; a 3-point dip is noise there,
    # but beyond the tolerance on 24,000 samples (0.0052, floor 0.01)
    small = AdaptiveGamma(start=1.0, factor=2.0, tolerance=0.01, patience=2)
    got = [small.observe_validation(e, a, samples=240) for e, a in enumerate([0.8, 0.77, 0.77])]
    assert got == [GROW] * 3 and small(3) == 8.0
    assert small.last_tolerance == pytest.approx(2 * (0.8 * 0.2 / 240) ** 0.5)
    large = AdaptiveGamma(start=1.0, factor=2.0, tolerance=0.01, patience=2)
    got = [large.observe_validation(e, a, samples=24_000) for e, a in enumerate([0.8, 0.77, 0.77])]
    assert got == [GROW, HOLD, BACK_OFF] and large(3) == 1.0
    assert large.last_tolerance == 0.01  # the floor: 2 sqrt(0.16 / 24000) = 0.0052 is below it
    assert AdaptiveGamma(tolerance=0.03).tolerance_for(1.0, 10) == 0.03  # b = 1: no noise term
    with pytest.raises(ValueError, match="positive integer"):
        AdaptiveGamma().observe_validation(0, 0.5, samples=0)
    with pytest.raises(ValueError, match="positive integer"):
        AdaptiveGamma().observe_validation(0, 0.5, samples=True)


def test_the_trainer_records_the_tolerance_of_its_validation_split(tmp_path):
    run = train(TrainConfig(**TINY, epochs=3, out_dir=str(tmp_path / "r")))
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    n, best = summary["validation_samples"], 0.0
    for row in run.history:
        best = max(best, row["val_acc"])
        assert row["gamma_tolerance"] == pytest.approx(max(0.01, 2 * (best * (1 - best) / n) ** 0.5))
    header = (tmp_path / "r" / "history.csv").read_text().splitlines()[0].split(",")
    assert "gamma_tolerance" in header


def steps(schedule, pairs, samples=None):
    """(decision, gamma after it) for each (training accuracy, validation accuracy) in turn, as the trainer
    passes them: observe() then observe_validation()."""
    out = []
    for epoch, (train_accuracy, accuracy) in enumerate(pairs):
        schedule.observe(epoch, train_accuracy)
        out.append((schedule.observe_validation(epoch, accuracy, samples=samples), schedule(epoch + 1)))
    return out


def test_a_sustained_fall_of_the_training_accuracy_backs_off_while_validation_holds():
    s = AdaptiveGamma(start=1.0, factor=2.0, tolerance=0.01, patience=2)
    # validation flat within its (wide, 240-sample) tolerance throughout; training falls 2-3 points
    got = steps(s, [(0.90, 0.80), (0.95, 0.80), (0.93, 0.79), (0.92, 0.80), (0.99, 0.80)], samples=240)
    assert got == [(GROW, 2.0), (GROW, 4.0), (HOLD, 4.0), (BACK_OFF, 2.0), (HOLD, 2.0)]
    assert s.best_train == 0.99 and s.stopped


def test_a_training_dip_within_the_floor_or_shorter_than_patience_keeps_growing():
    s = AdaptiveGamma(start=1.0, factor=2.0, tolerance=0.01, patience=2)
    got = steps(s, [(0.90, 0.8), (0.895, 0.8), (0.85, 0.8), (0.91, 0.8)], samples=240)
    assert got == [(GROW, 2.0), (GROW, 4.0), (HOLD, 4.0), (GROW, 8.0)]
    with pytest.raises(ValueError, match="training accuracy must be a fraction"):
        s.observe(4, float("nan"))


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30), st.integers(0, 29),
       st.integers(1, 1000))
def test_round_trip_with_training_accuracies_continues_identically(pairs, cut, samples):
    cut = min(cut, len(pairs))
    s = AdaptiveGamma(start=1e-2, factor=1.5, gamma_max=10.0, patience=2)
    steps(s, pairs[:cut], samples)
    restored = build_gamma_schedule("adaptive", start=1e-2, factor=1.5, gamma_max=10.0, patience=2)
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert steps(restored, pairs[cut:], samples) == steps(s, pairs[cut:], samples)
