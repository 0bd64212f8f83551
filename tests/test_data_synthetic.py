"""The generated tabular families (sklearn make_classification, spirals) and the npz writer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lpc_geom.data import load_dataset, load_npz, make_classification, make_spirals, save_npz


def _raw(ds):
    """Undo the per-feature standardisation with the statistics the loader recorded."""
    mean, std = np.asarray(ds.info["feature_mean"]), np.asarray(ds.info["feature_std"])
    return ds.x_train.double().numpy() * std + mean, ds.x_test.double().numpy() * std + mean


def test_classification_is_sklearns_generator_standardised_on_the_training_split():
    from sklearn.datasets import make_classification as sk

    ds = make_classification(num_classes=4, num_features=12, num_informative=6, num_samples=400, flip_y=0.0,
                             class_sep=1.5, seed=3)
    assert ds.name == "classification" and ds.input_shape == (12,) and ds.num_classes == 4
    assert ds.num_train + ds.num_test == 400 and ds.num_test == 80
    np.testing.assert_allclose(ds.x_train.double().mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.double().std(0, unbiased=False).numpy(), 1.0, atol=1e-5)
    x, y = sk(n_samples=400, n_features=12, n_informative=6, n_redundant=3, n_repeated=0, n_classes=4,
              n_clusters_per_class=2, flip_y=0.0, class_sep=1.5, shuffle=True, random_state=3)
    raw_train, raw_test = _raw(ds)
    both = np.concatenate([raw_train, raw_test])
    labels = np.concatenate([ds.y_train.numpy(), ds.y_test.numpy()])
    order, ref = np.lexsort(both.T[::-1]), np.lexsort(x.T[::-1])  # the same rows, in some order
    np.testing.assert_allclose(both[order], x[ref], atol=1e-5)
    assert np.array_equal(labels[order], y[ref])
    assert torch.bincount(ds.y_test).tolist() == [20, 20, 20, 20]  # stratified


def test_classification_is_deterministic_per_seed_and_harder_with_label_noise():
    a, b = make_classification(seed=1, num_samples=300), make_classification(seed=1, num_samples=300)
    c = make_classification(seed=2, num_samples=300)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    from sklearn.linear_model import LogisticRegression

    def accuracy(flip):
        ds = make_classification(num_classes=3, num_samples=2000, flip_y=flip, seed=0)
        clf = LogisticRegression(max_iter=2000).fit(ds.x_train.numpy(), ds.y_train.numpy())
        return clf.score(ds.x_test.numpy(), ds.y_test.numpy())

    assert accuracy(0.0) > accuracy(0.4) + 0.15


@pytest.mark.parametrize("options, pattern", [
    ({"num_classes": 1}, "num_classes must be >= 2"),
    ({"num_informative": 30, "num_features": 20}, "num_informative <= num_features"),
    ({"num_classes": 5, "num_informative": 2, "clusters_per_class": 1}, "2 \\*\\* num_informative = 4"),
    ({"num_samples": 5}, "num_samples must be >= 2 \\* num_classes = 10"),
    ({"class_sep": 0.0}, "class_sep must be > 0"),
    ({"flip_y": 1.0}, r"flip_y must be in \[0, 1\)"),
    ({"test_fraction": 1.0}, "test_fraction"),
])
def test_classification_rejects_bad_options(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_classification(**options)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.floats(0.25, 3.0), st.integers(0, 2**31))
def test_noiseless_spirals_lie_on_their_arms(num_classes, turns, seed):
    ds = make_spirals(num_classes=num_classes, num_samples=60, turns=turns, noise=0.0, seed=seed)
    raw_train, raw_test = _raw(ds)
    for x, y in ((raw_train, ds.y_train.numpy()), (raw_test, ds.y_test.numpy())):
        r = np.linalg.norm(x, axis=1)
        assert np.all(r <= 1.0 + 1e-6)
        # theta = 2 pi (turns r + k / K) modulo 2 pi
        phase = np.arctan2(x[:, 1], x[:, 0]) - 2 * np.pi * (turns * r + y / num_classes)
        residual = np.angle(np.exp(1j * phase))
        assert np.all(np.abs(residual[r > 1e-3]) < 1e-4)


def test_spirals_in_more_dimensions_span_a_plane_and_are_seeded():
    ds = make_spirals(num_samples=300, noise=0.0, dim=7, seed=4)
    raw_train, _ = _raw(ds)
    singular = np.linalg.svd(raw_train - raw_train.mean(0), compute_uv=False)
    assert ds.input_shape == (7,) and singular[1] > 1e-2 * singular[0] and singular[2] < 1e-5 * singular[0]
    again, other = make_spirals(num_samples=300, noise=0.0, dim=7, seed=4), make_spirals(num_samples=300, dim=7)
    assert torch.equal(ds.x_train, again.x_train) and not torch.equal(ds.x_train, other.x_train)
    assert torch.bincount(ds.y_train).tolist() == [80, 80, 80]
    for options, pattern in (({"dim": 1}, "dim must be >= 2"), ({"turns": 0.0}, "turns must be"),
                             ({"noise": -1.0}, "noise must be"), ({"num_classes": 1}, "num_classes")):
        with pytest.raises(ValueError, match=pattern):
            make_spirals(**options)


def test_save_npz_round_trips_through_the_npz_loader(tmp_path):
    ds = load_dataset("spirals", num_samples=120, seed=2)
    path = save_npz(ds, tmp_path / "spirals")
    assert path == tmp_path / "spirals.npz" and path.is_file()
    back = load_npz(path)
    assert back.name == "npz:spirals" and back.class_names == ds.class_names
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(back, key), getattr(ds, key))
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["class_names", "x_test", "x_train", "y_test", "y_train"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_npz(ds, tmp_path / "missing" / "x.npz")
