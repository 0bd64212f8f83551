"""The public collapse figures called directly (arrays + labels, a manifold, ClassStatistics), their
closed forms, and every guard on inputs that reach it: on the defined side and on the undefined side."""

import math

import geoopt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lpc_geom.analysis import collapse
from lpc_geom.analysis.collapse import UndefinedMetricError


def _pairs(means, spread=0.0, axis=0):
    """Two samples per class, at mean +- spread along ``axis``: class means are exact."""
    means = np.asarray(means, dtype=np.float64)
    K, d = means.shape
    step = np.zeros(d)
    step[axis] = spread
    z = np.concatenate([means + step, means - step])
    y = np.concatenate([np.arange(K), np.arange(K)])
    return z, y


def _reference(z, y):
    classes = np.unique(y)
    mu = np.stack([z[y == c].mean(0) for c in classes])
    M = mu - mu.mean(0)
    R = z - mu[np.searchsorted(classes, y)]
    return mu, M, R.T @ R / len(z)


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 6)
    z = rng.normal(size=(24, 3)) + 4 * rng.normal(size=(4, 3))[y]
    return z, y


# --------------------------------------------------------------------------- closed forms, arrays + labels
def test_figures_from_arrays_match_their_definitions(data):
    z, y = data
    _, M, Sw = _reference(z, y)
    K, d = M.shape
    Sb = M.T @ M / K
    zc = z - z.mean(0)
    norms = np.linalg.norm(M, axis=1)
    Mn = M / norms[:, None]
    cos = (Mn @ Mn.T)[np.triu_indices(K, 1)]
    E = np.eye(K) - 1.0 / K
    G = Mn @ Mn.T
    r = np.linalg.norm(z, axis=1)
    expected = {
        "sigma_w": np.trace(Sw) / d,
        "sigma_w_rel": np.trace(Sw) / np.trace(zc.T @ zc / len(z)),
        "nc1": np.trace(Sw @ np.linalg.pinv(Sb)) / K,
        "nc2_equinorm": norms.std() / norms.mean(),
        "nc2_equiangular": cos.std(),
        "nc2_maxangle": np.abs(cos + 1 / (K - 1)).mean(),
        "etf_distance": np.linalg.norm(G / np.linalg.norm(G) - E / np.linalg.norm(E)),
        "norm_cv": r.std() / r.mean(),
    }
    stats = collapse.class_statistics(z, y)
    for name, value in expected.items():
        fn = getattr(collapse, name)
        assert fn(z, y) == pytest.approx(value, rel=1e-10), name
        assert fn(stats) == pytest.approx(value, rel=1e-10), name
    assert stats.total_trace == pytest.approx(np.trace(zc.T @ zc / len(z)), rel=1e-12)


def test_metric_argument_forms_are_checked(data):
    z, y = data
    stats = collapse.class_statistics(z, y)
    with pytest.raises(TypeError, match="either ClassStatistics alone"):
        collapse.nc1(stats, y)
    with pytest.raises(TypeError, match="either ClassStatistics alone"):
        collapse.nc1(stats, manifold=geoopt.PoincareBall())
    with pytest.raises(TypeError, match="labels are required"):
        collapse.nc1(z)


def test_manifold_reaches_the_figures_in_the_chart():
    # On the Poincare ball every moment figure is the Euclidean one of the logmap0 chart coordinates.
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 5)
    ball = geoopt.PoincareBall(c=1.5)
    v = 0.3 * rng.normal(size=(15, 2)) + rng.normal(size=(3, 2))[y]
    z = ball.expmap0(torch.from_numpy(v)).numpy()
    x = math.sqrt(1.5) * np.linalg.norm(z, axis=1, keepdims=True)
    u = z * np.arctanh(x) / x  # logmap0 of the ball, in normalised units
    for name in ("nc1", "sigma_w_rel", "nc2_equinorm", "etf_distance", "nc2_equiangular"):
        fn = getattr(collapse, name)
        on_ball, in_chart, flat = fn(z, y, manifold=ball), fn(u, y), fn(z, y)
        assert on_ball == pytest.approx(in_chart, rel=1e-9), name
        assert abs(on_ball - flat) > 1e-4 * abs(flat), name  # the manifold really changes the figure
    r = np.linalg.norm(u, axis=1)
    assert collapse.norm_cv(z, y, manifold=ball) == pytest.approx(r.std() / r.mean(), rel=1e-9)


# --------------------------------------------------------------------------- NC1 rank tolerance
def test_nc1_keeps_a_small_but_real_singular_value_and_drops_rounding():
    # Three class means almost on a line: the second singular value of the centred means is ~1e-9,
    # far above float64 rounding, and contributes v^T Sigma_W v / s^2 to NC1.
    tiny = 1e-9
    z, y = _pairs([[1.0, 0.0], [-1.0, 0.0], [0.0, 3 * tiny]], spread=1e-3, axis=1)
    _, M, Sw = _reference(z, y)
    _, s, vh = np.linalg.svd(M, full_matrices=False)
    assert s[1] < 1e-8
    expected = float(sum(vh[i] @ Sw @ vh[i] / s[i] ** 2 for i in range(2)))
    assert collapse.nc1(z, y) == pytest.approx(expected, rel=1e-6)
    assert expected > 1e9  # dominated by the small direction
    # Exactly collinear means: the null singular value is rounding and is dropped (rank K - 1 = 1 here).
    z, y = _pairs([[1.0, 2.0], [-1.0, -2.0], [0.0, 0.0]], spread=1e-3, axis=1)
    _, M, Sw = _reference(z, y)
    _, s, vh = np.linalg.svd(M, full_matrices=False)
    assert collapse.nc1(z, y) == pytest.approx(vh[0] @ Sw @ vh[0] / s[0] ** 2, rel=1e-9)


def test_nc1_undefined_when_all_class_means_coincide():
    z, y = _pairs([[1.0, 1.0], [1.0, 1.0]], spread=0.5)
    with pytest.raises(UndefinedMetricError, match="all class means coincide"):
        collapse.nc1(z, y)
    for fn in (collapse.nc2_equinorm, collapse.etf_distance):
        with pytest.raises(UndefinedMetricError):
            fn(z, y)


# --------------------------------------------------------------------------- zero centred means
@pytest.mark.parametrize("fn", [collapse.nc2_equiangular, collapse.nc2_maxangle, collapse.etf_distance])
def test_zero_centred_mean_guard_on_both_sides(fn):
    # Class 2's mean equals the mean of the class means: its direction is undefined.
    z, y = _pairs([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]], spread=0.1)
    with pytest.raises(UndefinedMetricError, match=r"centred mean of class\(es\) 2 is zero"):
        fn(z, y)
    # A centred mean of 1e-17 next to unit means is rounding noise of the means: still undefined.
    z, y = _pairs([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.5e-17]], spread=0.1)
    with pytest.raises(UndefinedMetricError, match="is zero"):
        fn(z, y)
    # 1e-11 is far above the rounding of unit means: a real, tiny centred mean, the figure is defined.
    z, y = _pairs([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.5e-11]], spread=0.1)
    assert math.isfinite(fn(z, y))


def test_equinorm_guard_uses_the_scale_of_the_means():
    # means far from the origin that differ only by rounding: undefined; by 1e-9: defined
    z, y = _pairs([[1e3, 0.0], [1e3 + 2e-13, 0.0]], spread=0.5, axis=1)
    with pytest.raises(UndefinedMetricError, match="equinorm"):
        collapse.nc2_equinorm(z, y)
    z, y = _pairs([[1e3, 0.0], [1e3 + 1e-9, 0.0]], spread=0.5, axis=1)
    assert collapse.nc2_equinorm(z, y) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- spreads and norms
def test_sigma_w_rel_and_norm_cv_guards():
    z = np.ones((4, 2))
    y = np.array([0, 1, 0, 1])
    with pytest.raises(UndefinedMetricError, match="all latents are identical"):
        collapse.sigma_w_rel(z, y)
    with pytest.raises(UndefinedMetricError, match="all latents are at the origin"):
        collapse.norm_cv(np.zeros((4, 2)), y)
    sphere = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    with pytest.raises(UndefinedMetricError, match="sphere has no origin"):
        collapse.norm_cv(sphere, y, manifold=geoopt.Sphere())
    # classes collapsed to points: no within-class spread, figure 0 (defined)
    z, y = _pairs([[1.0, 0.0], [0.0, 2.0]])
    assert collapse.sigma_w_rel(z, y) == 0.0 and collapse.sigma_w(z, y) == 0.0


# --------------------------------------------------------------------------- separation ratio
def test_separation_ratio_values_median_and_exclusions():
    # on a line, two classes: class 0 at {-1, +1} (mean 0), class 1 at {9, 11} and one sample exactly at 10.
    z = np.array([[-1.0, 0.0], [1.0, 0.0], [9.0, 0.0], [11.0, 0.0], [10.0, 0.0]])
    y = np.array([0, 0, 1, 1, 1])
    # own distances 1, 1, 1, 1, 0 (excluded); other: 10 - (-1) = 11, 9, 9, 11
    R = np.array([11.0, 9.0, 9.0, 11.0])
    got = collapse.separation_ratio(z, y)
    assert got.excluded == 1
    assert got.mean == pytest.approx(R.mean()) and got.median == pytest.approx(10.0)  # midpoint of 9, 11
    z, y = _pairs([[0.0, 0.0], [3.0, 0.0]])
    with pytest.raises(UndefinedMetricError, match="every sample sits exactly on its class centre"):
        collapse.separation_ratio(z, y)


def test_distance_figures_need_latents_and_defined_sphere_centres():
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=(8, 3)), np.repeat([0, 1], 4)
    stats = collapse.class_statistics(z, y)
    streamed = collapse.ClassStatistics(**{**stats.__dict__, "latents": None})
    with pytest.raises(TypeError, match="need the latents"):
        collapse.separation_ratio(streamed)
    # class 1 has antipodal samples on the sphere: its mean direction vector is 0
    sphere = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    with pytest.raises(UndefinedMetricError, match=r"class\(es\) 1 have no extrinsic mean on the sphere"):
        collapse.separation_ratio(sphere, np.array([0, 0, 1, 1]), manifold=geoopt.Sphere())


# --------------------------------------------------------------------------- NC3, NC4
def test_nc3_closed_form_and_classifier_forms(data):
    z, y = data
    _, M, _ = _reference(z, y)
    rng = np.random.default_rng(6)
    W = rng.normal(size=(4, 3))
    expected = np.sum((W / np.linalg.norm(W) - M / np.linalg.norm(M)) ** 2)
    lin = nn.Linear(3, 4).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
    for classifier in (W, (W, np.zeros(4)), lin):
        assert collapse.nc3(z, y, classifier=classifier) == pytest.approx(expected, rel=1e-10)
    assert collapse.nc3(collapse.class_statistics(z, y), classifier=W) == pytest.approx(expected, rel=1e-10)
    # proportional to the centred means: 0
    assert collapse.nc3(z, y, classifier=5.0 * M) == pytest.approx(0.0, abs=1e-20)
    # integer labels index the classifier rows: labels {1, 3} use rows 1 and 3 of a 4-row classifier
    sub = np.isin(y, [1, 3])
    _, M13, _ = _reference(z[sub], y[sub])
    W13 = W[[1, 3]]
    expected13 = np.sum((W13 / np.linalg.norm(W13) - M13 / np.linalg.norm(M13)) ** 2)
    assert collapse.nc3(z[sub], y[sub], classifier=W) == pytest.approx(expected13, rel=1e-10)


def test_nc3_guards():
    z, y = _pairs([[1.0, 0.0], [-1.0, 0.0]], spread=0.1, axis=1)
    with pytest.raises(UndefinedMetricError, match="classifier weight is zero"):
        collapse.nc3(z, y, classifier=np.zeros((2, 2)))
    z, y = _pairs([[1.0, 1.0], [1.0, 1.0]], spread=0.1)
    with pytest.raises(UndefinedMetricError, match="all class means coincide: NC3"):
        collapse.nc3(z, y, classifier=np.eye(2))


def test_nc4_with_a_classifier_logits_and_a_manifold():
    z = np.array([[0.0, 0.0], [0.2, 0.0], [2.0, 0.0], [2.2, 0.0], [1.05, 0.0], [1.2, 0.0]])
    y = np.array([0, 0, 1, 1, 0, 1])
    # class means: (0.35, 0) and (1.8, 0); nearest-mean predictions 0, 0, 1, 1, 0, 1 (midpoint 1.075)
    W, b = np.array([[-1.0, 0.0], [1.0, 0.0]]), np.array([0.0, -2.2])  # argmax: 1 iff z_0 > 1.1
    # network predictions 0, 0, 1, 1, 0, 1 ... with the bias; without it everything right of 0 is class 1
    assert collapse.nc4(z, y, classifier=(W, b)) == 0.0
    assert collapse.nc4(z, y, classifier=(W, np.zeros(2))) == pytest.approx(2 / 6)
    lin = nn.Linear(2, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
    assert collapse.nc4(z, y, classifier=lin) == 0.0
    logits = np.zeros((6, 2))
    logits[:, 0] = 1.0  # the network always says class 0: wrong for the three class-1 predictions
    assert collapse.nc4(z, y, logits=logits) == pytest.approx(3 / 6)
    with pytest.raises(TypeError, match="nc4 needs logits or a classifier"):
        collapse.nc4(z, y)
    # on the ball the nearest centre is geodesic, the centres the tangent means expmap0(mean logmap0(z))
    ball = geoopt.PoincareBall(c=0.2)
    zt = torch.from_numpy(z)
    centres = torch.stack([ball.expmap0(ball.logmap0(zt[y == c]).mean(0)) for c in (0, 1)])
    nearest = ball.dist(zt[:, None, :], centres[None]).argmin(1).numpy()
    net = np.where(z[:, 0] > 0.6, 1, 0)
    expected = float((nearest != net).mean())
    assert expected != float((np.array([0, 0, 1, 1, 0, 1]) != net).mean())  # the geometry matters here
    onehot = np.eye(2)[net]
    assert collapse.nc4(z, y, manifold=ball, logits=onehot) == pytest.approx(expected)


# --------------------------------------------------------------------------- the statistics' passes
@settings(max_examples=25, deadline=None)
@given(
    K=st.integers(2, 6),
    d=st.integers(13, 24),
    spread=st.sampled_from([1.0, 1e-3, 1e-8]),
    offset=st.sampled_from([0.0, 50.0]),
    seed=st.integers(0, 2**16),
)
def test_centre_distances_match_direct_differences(K, d, spread, offset, seed):
    """With fewer than d/2 mean axes the distances come from the residual coordinates along them; they
    equal the distances from direct differences, collapsed classes far from the origin included."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(K), rng.integers(0, K, 60)])
    z = offset + rng.normal(size=(K, d))[y] + spread * rng.normal(size=(y.size, d))
    s = collapse.class_statistics(z, y)
    assert s.mean_coords is not None  # the path under test
    D = collapse.centre_distances(s).numpy()
    # the offsets of the class means from each class's first member (y[c] = c): residuals to the spread
    off = np.stack([(z[y == c] - z[c]).mean(0) for c in range(K)])
    mu = z[:K] + off
    ref = np.linalg.norm(z[:, None, :] - mu[None, :, :], axis=2)
    scale = np.linalg.norm(mu[:, None] - mu[None, :], axis=2).max()
    np.testing.assert_allclose(D, ref, rtol=1e-9, atol=1e-12 * scale)
    own = np.linalg.norm((z - z[y]) - off[y], axis=1)
    np.testing.assert_allclose(D[np.arange(y.size), y], own, rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(K=st.integers(2, 5), d=st.integers(2, 8), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_unit_statistics_match_their_definitions(K, d, relu, seed):
    """The hypercube's unit statistics (computed on first use): moments about the grand mean, sign counts
    from sign sums and zero counts, per-class largest magnitudes."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(K), rng.integers(0, K, 40)])
    z = rng.normal(size=(K, d))[y] + rng.normal(size=(y.size, d))
    if relu:
        z = np.maximum(z, 0.0)  # exact zeros
    s = collapse.class_statistics(z, y)
    dev = z - z.mean(0)
    np.testing.assert_allclose(s.unit_mean.numpy(), z.mean(0), rtol=1e-12, atol=1e-14)
    for order, got in ((2, s.unit_m2), (3, s.unit_m3), (4, s.unit_m4)):
        np.testing.assert_allclose(got.numpy(), (dev**order).mean(0), rtol=1e-10, atol=1e-13)
    for c in range(K):
        zc = z[y == c]
        np.testing.assert_array_equal(s.sign_pos[c].numpy(), (zc > 0).sum(0))
        np.testing.assert_array_equal(s.sign_neg[c].numpy(), (zc < 0).sum(0))
        np.testing.assert_array_equal(s.abs_max[c].numpy(), np.abs(zc).max(0))


def test_collapsed_float32_latents_keep_float64_accuracy():
    """float32 latents of collapsed classes (spread 1e-3 of the means' scale, near float32 resolution of
    the differences): the collapse figures equal the float64 two-pass formulas on the same values."""
    rng = np.random.default_rng(11)
    K, d = 10, 32
    y = np.concatenate([np.arange(K), rng.integers(0, K, 3000)])
    z = (100.0 + rng.normal(size=(K, d))[y] + 1e-3 * rng.normal(size=(y.size, d))).astype(np.float32)
    s = collapse.class_statistics(torch.from_numpy(z), y)
    assert s.latents.dtype == torch.float32  # no float64 copy of the array
    x = z.astype(np.float64)
    mu = np.stack([x[y == c].mean(0) for c in range(K)])
    r = x - mu[y]
    within = float((r * r).sum()) / y.size
    M = mu - mu.mean(0)
    _, sv, vt = np.linalg.svd(M, full_matrices=False)
    keep = sv > max(K, d) * np.finfo(np.float64).eps * max(sv[0], np.linalg.norm(mu, axis=1).max())
    nc1 = float((((r @ vt[keep].T) ** 2).sum(0) / y.size / sv[keep] ** 2).sum())
    assert collapse.sigma_w(s) == pytest.approx(within / d, rel=1e-10)
    assert collapse.nc1(s) == pytest.approx(nc1, rel=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_head_outputs_from_the_statistics_pass(dtype, bias):
    """A linear head's outputs computed with the statistics' second pass, W e_i + (W mu_c + b), equal the
    direct float64 W z_i + b; only on flat geometries, and the mean-axis figures are unchanged."""
    rng = np.random.default_rng(4)
    K, d, n = 6, 40, 900
    y = rng.integers(0, K, n)
    z = (3.0 + rng.normal(size=(K, d))[y] + 0.1 * rng.normal(size=(n, d))).astype(dtype)
    W, b = rng.normal(size=(K + 2, d)), (rng.normal(size=K + 2) if bias else None)
    geom, zz, eps, enc, codes = collapse.prepare_inputs(z, y, None)
    Wt = torch.from_numpy(W)
    bt = None if b is None else torch.from_numpy(b)
    s = collapse.statistics_from_arrays(geom, zz, eps, enc, codes, (Wt, bt))
    ref = z.astype(np.float64) @ W.T + (0.0 if b is None else b)
    np.testing.assert_allclose(s.logits.numpy(), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    plain = collapse.statistics_from_arrays(geom, zz, eps, enc, codes)
    assert plain.logits is None
    np.testing.assert_allclose(s.within_axes.numpy(), plain.within_axes.numpy(), rtol=1e-12)
    sphere = collapse.class_statistics(z / np.linalg.norm(z, axis=1, keepdims=True), y, manifold=geoopt.Sphere())
    assert sphere.logits is None


def test_analyze_with_a_linear_head_matches_given_logits(rng):
    """nc4 and the Fisher-Rao figures from the fused outputs equal those from the direct W z + b."""
    from lpc_geom import analyze
    from lpc_geom.analysis.fisher.summary import classmean_fisher_rao

    K, d, n = 5, 24, 600
    y = rng.integers(0, K, n)
    z = (rng.normal(size=(K, d))[y] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    W, b = rng.normal(size=(K, d)), rng.normal(size=K)
    direct = torch.from_numpy(z.astype(np.float64) @ W.T + b)
    fused = analyze(z, y, classifier=(W, b), groups=["collapse", "fisher"]).to_dict()
    assert fused["nc4"] == analyze(z, y, logits=direct.numpy(), groups=["collapse"])["nc4"]
    ref = classmean_fisher_rao(torch.softmax(direct, dim=1), torch.from_numpy(y), K)
    assert fused["fisher_rao_classmean_min"] == pytest.approx(ref[0], rel=1e-12)
    assert fused["fisher_rao_classmean_mean"] == pytest.approx(ref[1], rel=1e-12)
