"""Streaming accumulator against the in-memory analysis (float32 input, collapsed latents included)."""

import math

import geoopt
import numpy as np
import pytest
import torch

from lpc_geom import CollapseAccumulator, analyze

MOMENT_KEYS = ["sigma_w", "sigma_w_rel", "norm_cv", "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle",
               "etf_distance", "hypercube_bimodality_fraction", "hypercube_sign_agreement",
               "hypercube_vertex_residual", "hypercube_min_hamming", "hypercube_distinct_codes",
               "gw_etf", "gw_hypercube"]  # the class-centre (transport) figures stream too


def stream(z, y, batch, manifold=None, **report_kw):
    acc = CollapseAccumulator(manifold=manifold)
    for s in range(0, len(y), batch):
        acc.update(z[s : s + batch], y[s : s + batch])
    return acc.report(**report_kw)


def assert_matches(streamed, full, keys, rel=1e-5):
    for k in keys:
        a, b = streamed[k], full[k]
        if math.isnan(b):  # undefined in both, for the same reason
            assert math.isnan(a) and streamed.undefined[k] == full.undefined[k], (k, a, b)
            continue
        assert abs(a - b) <= rel * max(abs(b), 1e-300), (k, a, b)


@pytest.mark.parametrize("offset,noise", [(0.0, 1.0), (1000.0, 1e-4)])
def test_float32_stream_matches_in_memory(rng, offset, noise):
    N, d, K = 3000, 16, 6
    y = rng.integers(0, K, N)
    means = offset + rng.normal(size=(K, d)) * 1e-2 * (1 if offset else 100)
    z = (means[y] + noise * rng.normal(size=(N, d))).astype(np.float32)
    W = rng.normal(size=(K, d))
    full = analyze(z, y, classifier=(W, None))
    streamed = stream(z, y, 97, classifier=(W, None))
    assert_matches(streamed, full, [*MOMENT_KEYS, "nc3"])
    assert set(streamed.to_dict()) == {"N", "K", "d", *MOMENT_KEYS, "nc3"}
    if offset:
        # the naive one-pass float32 formula is the trap this avoids
        zz = torch.from_numpy(z)
        tr_raw = (zz * zz).sum() - sum(
            (zz[torch.from_numpy(y == c)].sum(0) ** 2).sum() / (y == c).sum() for c in range(K)
        )
        naive = float(tr_raw) / N / d
        assert abs(naive - full["sigma_w"]) > 0.5 * full["sigma_w"]


def test_classes_appear_late_and_batches_of_one(rng):
    names = np.array(["zeta", "alpha", "mid"])
    y = np.repeat([0, 1, 2], 40)
    z = rng.normal(size=(120, 5)) + 4 * np.eye(5)[y]
    full = analyze(z, names[y])
    acc = CollapseAccumulator()
    acc.update(z[:1], names[y][:1])  # a single-sample, single-class batch
    for s in range(1, 120, 23):
        acc.update(torch.from_numpy(z[s : s + 23]), list(names[y][s : s + 23]))
    rep = acc.report()
    assert rep.classes == ("alpha", "mid", "zeta") == full.classes
    assert_matches(rep, full, MOMENT_KEYS, rel=1e-9)


@pytest.mark.parametrize("manifold", [geoopt.PoincareBall(c=1.5), geoopt.Sphere()])
def test_manifold_stream_matches(rng, manifold):
    y = rng.integers(0, 4, 800)
    z = torch.from_numpy(rng.normal(size=(4, 6))[y] + 0.3 * rng.normal(size=(800, 6)))
    z = manifold.projx(z * 0.2) if isinstance(manifold, geoopt.PoincareBall) else z / z.norm(dim=1, keepdim=True)
    full = analyze(z.float(), y, manifold=manifold)
    keys = [k for k in MOMENT_KEYS if not (k == "norm_cv" and isinstance(manifold, geoopt.Sphere))]
    assert_matches(stream(z.float(), y, 128, manifold=manifold), full, keys, rel=1e-9)


def test_accumulator_errors(rng):
    acc = CollapseAccumulator()
    with pytest.raises(ValueError, match="no batches"):
        acc.report()
    acc.update(rng.normal(size=(5, 3)), [0] * 5)
    with pytest.raises(ValueError, match="only one class"):
        acc.report()
    with pytest.raises(ValueError, match="d = 4"):
        acc.update(rng.normal(size=(5, 4)), [1] * 5)
    with pytest.raises(TypeError, match="changed type"):
        acc.update(rng.normal(size=(5, 3)), ["a"] * 5)
    acc.update(rng.normal(size=(1, 3)), [1])
    with pytest.raises(ValueError, match="min_class_size"):
        acc.report()
    rep = acc.report(min_class_size=1)
    assert rep.N == 6 and all(math.isfinite(v) or k in rep.undefined for k, v in rep.to_dict().items())


CODE_KEYS = ("hypercube_sign_agreement", "hypercube_distinct_codes", "hypercube_min_hamming")


def test_exactly_zero_class_mean_found_by_hypothesis():
    # A class whose unit-0 values sum to 0 exactly (grid data, float16). Streamed one sample at a time the
    # mean comes out as +5.6e-17: without a zero threshold its sign was +1 and sign_agreement 0.55, not 0.5.
    z = np.array([[2, 0, 0, 1, -2, 2, 0, 1, -2, -2], [-1, -2, 1, 0, -2, 0, -2, -2, -2, -2]], np.float16).T
    y = np.array([0, 1, 0, 1, 1, 1, 1, 1, 0, 1])
    full = analyze(z, y, min_class_size=1)
    streamed = stream(z, y, 1, min_class_size=1)
    assert full["hypercube_sign_agreement"] == streamed["hypercube_sign_agreement"] == 0.5
    assert_matches(streamed, full, CODE_KEYS, rel=0)


def test_exactly_zero_class_mean_judged_on_its_own_class(rng):
    # Class 0 cancels exactly on every unit, its extremes (+-1) first and last, the rest ~1e-3; class 1 is
    # all zeros. In memory (shifted by the first sample, +1) the rounding residue is ~3e-15, streamed ~2e-17:
    # a threshold relative to the unit's overall RMS (0.01 here, as class 1 dilutes it) called the in-memory
    # codes +-1 and the streamed ones 0. Both must be 0.
    m, d = 5000, 8
    x = 1e-3 * rng.normal(size=(m, d))
    c0 = np.concatenate([x, -x])[rng.permutation(2 * m)]
    c0 = np.concatenate([np.ones((1, d)), c0, -np.ones((1, d))])
    z = np.concatenate([c0, np.zeros((2 * m, d))])
    y = np.r_[np.zeros(len(c0), int), np.ones(2 * m, int)]
    full = analyze(z, y, groups=["hypercube"])
    streamed = stream(z, y, 333, groups=["hypercube"])
    # codes all 0: only the exact zeros (all of class 1) agree
    assert full["hypercube_sign_agreement"] == streamed["hypercube_sign_agreement"] == 2 * m / len(y)
    assert full["hypercube_distinct_codes"] == streamed["hypercube_distinct_codes"] == 1
    assert_matches(streamed, full, CODE_KEYS, rel=0)


def test_tiny_class_values_keep_their_sign():
    # Class 0 sits at +1e-14 on unit 0 while class 1 spans +-1 there: its mean is tiny next to the unit but
    # is its own values' mean exactly, so its code is +1 (not 0), and all its samples agree with it.
    z = np.array([[1e-14, 1.0]] * 3 + [[1.0, -1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, -1.0]])
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    full = analyze(z, y, groups=["hypercube"])
    assert full["hypercube_sign_agreement"] == pytest.approx(10 / 14)
    assert stream(z, y, 2, groups=["hypercube"])["hypercube_sign_agreement"] == pytest.approx(10 / 14)
