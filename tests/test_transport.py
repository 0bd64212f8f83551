"""Gromov-Wasserstein comparison of configurations, each in its own geometry."""

import itertools

import geoopt
import numpy as np
import pytest
import torch
from scipy.special import gammaln

from lpc_geom.analysis._validation import UndefinedMetricError
from lpc_geom.analysis.transport import (
    class_centres,
    compare,
    distance_matrix,
    gw_distance,
    gw_etf,
    gw_hypercube,
    gw_to_simplex_closed_form,
    hypercube_codes,
    regular_simplex,
    transport_summary,
)


def _rotation(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _isometric_copy(rng, x, scale=3.7, extra_dims=0):
    """Rotated (in a possibly larger space), translated, permuted and rescaled copy of x."""
    x = np.hstack([x, np.zeros((x.shape[0], extra_dims))])
    y = scale * x @ _rotation(rng, x.shape[1]) + rng.normal(size=x.shape[1])
    return y[rng.permutation(x.shape[0])]


@pytest.mark.parametrize("K", [3, 5, 10, 16])
def test_etf_against_an_isometric_copy_is_zero(rng, K):
    etf = regular_simplex(K)
    assert gw_distance(etf, _isometric_copy(rng, etf, extra_dims=3)) < 1e-12
    assert gw_etf(_isometric_copy(rng, etf, scale=0.01)) < 1e-12


def test_generic_configuration_against_an_isometric_copy_is_zero(rng):
    for n, d in [(6, 2), (12, 5), (25, 8)]:
        x = rng.normal(size=(n, d))
        assert gw_distance(x, _isometric_copy(rng, x)) < 1e-12


def test_regular_simplex():
    s = regular_simplex(5)
    C = distance_matrix(s)
    np.testing.assert_allclose(C[~np.eye(5, dtype=bool)], np.sqrt(2))
    np.testing.assert_allclose(s.sum(axis=0), 0.0, atol=1e-15)
    with pytest.raises(ValueError, match="at least 2"):
        regular_simplex(1)


def test_euclidean_points_against_their_poincare_images_tends_to_zero(rng):
    ball = geoopt.PoincareBall()
    x = rng.normal(size=(10, 4))
    x /= np.linalg.norm(x, axis=1).max()
    values = [gw_distance(x, ball.expmap0(torch.tensor(r * x)), manifold_b=ball) for r in (1.0, 0.3, 0.1, 0.01)]
    assert values[0] > 1e-3
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[-1] < 1e-9
    # the hyperbolic distortion is O(r^2) in distances, so O(r^4) in the squared loss
    assert values[2] / values[3] == pytest.approx(1e4, rel=0.1)


def test_etf_is_the_same_in_every_geometry(rng):
    K = 6
    etf = regular_simplex(K)
    on_sphere = etf / np.linalg.norm(etf, axis=1, keepdims=True)
    ball = geoopt.PoincareBall()
    in_ball = ball.expmap0(torch.tensor(2.0 * etf)).numpy()
    assert gw_distance(etf, on_sphere, manifold_b=geoopt.Sphere()) < 1e-12
    assert gw_distance(etf, in_ball, manifold_b=ball) < 1e-12
    assert gw_etf(in_ball, manifold=ball) < 1e-12


def test_geometry_matters_on_the_sphere(rng):
    x = rng.normal(size=(12, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sphere = geoopt.Sphere()
    rotated = x @ _rotation(rng, 3)
    assert gw_distance(x, rotated[rng.permutation(12)], manifold_a=sphere, manifold_b=sphere) < 1e-12
    # great-circle against chordal distances of the same points: a real, positive discrepancy
    assert gw_distance(x, x, manifold_a=sphere) > 1e-3
    C = distance_matrix(x, sphere)
    assert np.all(np.diag(C) == 0.0) and np.allclose(C, C.T)
    assert C.max() <= np.pi


def test_etf_against_random_points_has_the_documented_value(rng):
    # GW(simplex_n, Y) = ((n-1)/n) CV^2 of Y's pairwise distances (module notes), attained by the solver
    for n, d in [(5, 2), (10, 3), (10, 20), (20, 6)]:
        y = rng.normal(size=(n, d))
        C = distance_matrix(y)[~np.eye(n, dtype=bool)]
        cv2 = C.var() / C.mean() ** 2
        assert gw_to_simplex_closed_form(y) == pytest.approx((n - 1) / n * cv2, rel=1e-12)
        assert gw_distance(regular_simplex(n), y) == pytest.approx((n - 1) / n * cv2, rel=1e-9, abs=1e-15)
    # for Gaussian points: about ((n-1)/n) Var(chi_d) / E[chi_d]^2, 0.0228 for n = 10, d = 20
    n, d = 10, 20
    mean_chi = np.sqrt(2) * np.exp(gammaln((d + 1) / 2) - gammaln(d / 2))
    expected = (n - 1) / n * (d - mean_chi**2) / mean_chi**2
    assert expected == pytest.approx(0.0228, abs=1e-4)
    sample = [gw_to_simplex_closed_form(rng.normal(size=(n, d))) for _ in range(200)]
    assert np.mean(sample) == pytest.approx(expected, rel=0.15)


def test_scale_invariance_symmetry_and_determinism(rng):
    a, b = rng.normal(size=(8, 3)), rng.normal(size=(11, 5))
    ab = gw_distance(a, b, seed=1)
    assert gw_distance(10 * a, 0.1 * b, seed=1) == pytest.approx(ab, rel=1e-9)
    assert gw_distance(b, a, seed=1) == ab  # solved in a canonical orientation
    c = rng.normal(size=(8, 4))
    assert gw_distance(a, c) == gw_distance(c, a)
    assert gw_distance(a, b, seed=1) == ab
    assert gw_distance(a, b, restarts=30) <= gw_distance(a, b, restarts=0)
    assert ab > 0


def test_symmetric_configurations_need_the_known_correspondence(rng):
    cube = np.array([[i >> k & 1 for k in range(3)] for i in range(8)], dtype=float) * 2 - 1
    perm = rng.permutation(8)
    shuffled = cube[perm]  # from generic starts the solver stops in local minima here (module notes)
    match = np.zeros((8, 8))
    match[perm, np.arange(8)] = 1 / 8
    assert gw_distance(cube, shuffled, coupling0=match) < 1e-12
    assert gw_distance(shuffled, cube, coupling0=match.T) < 1e-12
    with pytest.raises(ValueError, match="coupling0"):
        gw_distance(cube, shuffled, coupling0=np.eye(8))


def test_noisy_hypercube_is_close_to_its_codes(rng):
    # the lower-bound start finds the matching; product and random starts alone do not (module notes)
    for K, d in [(8, 4), (20, 6)]:
        codes = np.where(rng.normal(size=(K, d)) < 0, -1.0, 1.0)
        codes = np.unique(codes, axis=0)
        means = 0.3 * codes + 0.003 * rng.normal(size=codes.shape)
        assert gw_hypercube(means) < 1e-3
        np.testing.assert_array_equal(hypercube_codes(means), codes)


def test_transport_summary_keys_and_values(rng):
    K = 8
    cube = 0.5 * np.array([[i >> k & 1 for k in range(3)] for i in range(K)], dtype=float) * 2 - 0.5
    s = transport_summary(cube)
    assert set(s) == {"gw_etf", "gw_hypercube"}
    assert s["gw_hypercube"] < 1e-12
    assert s["gw_etf"] == pytest.approx(gw_to_simplex_closed_form(cube), rel=1e-9)
    etf = regular_simplex(K)
    assert transport_summary(etf)["gw_etf"] < 1e-12
    # K = 2: every configuration is a simplex
    assert transport_summary(np.array([[1.0, 2.0], [-1.0, 0.5]]))["gw_etf"] == 0.0
    # uncentred vs centred codes
    shifted = cube + 2.0  # every mean in the positive orthant
    with pytest.raises(UndefinedMetricError, match="one sign code"):
        transport_summary(shifted)
    assert transport_summary(shifted, centre_codes=True)["gw_hypercube"] < 1e-12


def test_class_centres_and_compare(rng):
    K, d = 6, 3
    labels = np.repeat(np.arange(K), 20)
    means = 2.0 * rng.normal(size=(K, d))
    z = means[labels] + 0.05 * rng.normal(size=(K * 20, d))
    classes, centres = class_centres(z, labels)
    np.testing.assert_array_equal(classes, np.arange(K))
    np.testing.assert_allclose(centres, np.stack([z[labels == c].mean(0) for c in range(K)]))
    # the same model, rotated, rescaled and with its classes renamed: 0
    z2 = 5.0 * z @ _rotation(rng, d)
    assert compare(z, labels, z2, (labels * 7 + 3) % 11) < 1e-12
    # a Poincaré-ball model whose latents are small images of the Euclidean ones: close to 0
    ball = geoopt.PoincareBall()
    zb = ball.expmap0(torch.tensor(0.01 * z / np.abs(z).max())).numpy()
    assert compare(z, labels, zb, labels, manifold_b=ball) < 1e-6
    # a different class-mean geometry is detected; label sets of different sizes are fine
    other = rng.normal(size=(K + 2, d))[np.repeat(np.arange(K + 2), 5)]
    assert compare(z, labels, other, np.repeat(np.arange(K + 2), 5)) > 1e-3


def test_manifold_centres():
    ball = geoopt.PoincareBall()
    x = torch.tensor([[0.3, 0.1], [-0.3, -0.1], [0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    _, c = class_centres(x, np.array([0, 0, 1, 1]), manifold=ball)
    np.testing.assert_allclose(c[0], 0.0, atol=1e-15)  # symmetric pair: the origin
    np.testing.assert_allclose(c[1], [0.5, 0.0], atol=1e-12)  # repeated point: itself
    sphere = geoopt.Sphere()
    y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    _, c = class_centres(y[:2], np.array([0, 0]), manifold=sphere)
    np.testing.assert_allclose(c[0], [2**-0.5, 2**-0.5, 0.0])
    with pytest.raises(UndefinedMetricError, match="mean"):
        class_centres(y[2:], np.array([0, 0]), manifold=sphere)
    with pytest.raises(TypeError, match="unsupported manifold"):
        class_centres(np.eye(3), np.array([0, 0, 1]), manifold=geoopt.Stiefel())


def test_class_centres_are_the_analyzers_centres(rng):
    """transport.class_centres and the centres lpc_geom.analyze uses are one definition."""
    from lpc_geom.analysis.collapse import class_statistics

    ball = geoopt.PoincareBall(c=1.3)
    labels = np.repeat(np.arange(4), 30)
    v = 0.4 * rng.normal(size=(4, 3))[labels] + 0.2 * rng.normal(size=(120, 3))
    z = ball.expmap0(torch.tensor(v)).numpy()
    _, centres = class_centres(z, labels, manifold=ball)
    stats = class_statistics(z, labels, manifold=ball)
    np.testing.assert_allclose(centres, stats.centres().numpy(), atol=1e-12)
    # and they are the tangent-space means at the origin, not geoopt's gyromidpoint
    tangent = np.stack([ball.logmap0(torch.tensor(z[labels == c])).mean(0).numpy() for c in range(4)])
    np.testing.assert_allclose(centres, ball.expmap0(torch.tensor(tangent)).numpy(), atol=1e-12)


def test_bad_input(rng):
    x = rng.normal(size=(5, 2))
    ball = geoopt.PoincareBall()
    with pytest.raises(ValueError, match="outside the Poincaré ball"):
        gw_distance(x, x, manifold_b=ball)
    with pytest.raises(ValueError, match="outside the Poincaré ball"):
        compare(x, [0, 0, 1, 1, 2], 0.1 * x, [0, 0, 1, 1, 2], manifold_a=ball)
    with pytest.raises(ValueError, match="not on the manifold"):
        gw_distance(x, x, manifold_a=geoopt.Sphere())
    with pytest.raises(UndefinedMetricError, match="zero extent"):
        gw_distance(np.ones((4, 2)), x)
    with pytest.raises(ValueError, match="at least 2 points"):
        gw_distance(x[:1], x)
    with pytest.raises(ValueError, match="NaN"):
        gw_distance(np.where(np.eye(5, 2) > 0, np.nan, x), x)
    with pytest.raises(ValueError, match="restarts"):
        gw_distance(x, x, restarts=-1)
    with pytest.raises(ValueError, match="shape"):
        gw_distance(x.ravel(), x)
    with pytest.raises(ValueError, match="labels"):
        compare(x, [0, 1], x, [0, 1, 0, 1, 0])
    with pytest.raises(TypeError, match="geoopt manifold"):
        gw_distance(x, x, manifold_a="sphere")
