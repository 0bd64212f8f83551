"""Fisher geometry of classifier latents: closed forms and independent autograd Riemann computations."""

import math

import geoopt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import hessian, jacfwd, jacrev

from lpc_geom.analysis._validation import UndefinedMetricError
from lpc_geom.analysis.fisher import (
    class_probabilities,
    fisher_pointwise,
    fisher_pointwise_autograd,
    fisher_rao_distance,
    fisher_summary,
    pullback_metric,
    pullback_metric_autograd,
    sectional_curvature,
    sectional_curvature_autograd,
    third_cumulant,
)

DT = torch.float64
SUMMARY_KEYS = {
    "fisher_logvol_mean",
    "fisher_trace_mean",
    "fisher_scalar_curvature",
    "fisher_scalar_curvature_std",
    "fisher_masked_fraction",
    "fisher_rank",
    "fisher_rao_classmean_min",
    "fisher_rao_classmean_mean",
}


def _head(rng, K, d, scale=1.0):
    return rng.normal(size=(K, d)) * scale, rng.normal(size=K)


def _linear_fn(W, b):
    Wt, bt = torch.tensor(W), torch.tensor(b)
    return lambda x: x @ Wt.T + bt


# -- an independent Riemann tensor: Christoffel symbols of a metric field by autograd -----------------------
def _christoffel(metric_fn):
    def gamma(x):
        G = metric_fn(x)
        dG = jacfwd(metric_fn)(x)  # dG[a, b, c] = d_c G_ab
        first_kind = torch.einsum("jmi->ijm", dG) + torch.einsum("imj->ijm", dG) - dG
        return 0.5 * torch.einsum("lm,ijm->lij", torch.linalg.inv(G), first_kind)

    return gamma


def _riemann(metric_fn, x):
    """R[l, k, i, j] with R(d_i, d_j) d_k = R^l_kij d_l, R(X, Y) = [nabla_X, nabla_Y] - nabla_[X, Y]."""
    gamma = _christoffel(metric_fn)
    Gm = gamma(x)
    dG = jacfwd(gamma)(x)  # dG[l, a, b, c] = d_c Gamma^l_ab
    return (
        torch.einsum("ljki->lkij", dG)
        - torch.einsum("likj->lkij", dG)
        + torch.einsum("lim,mjk->lkij", Gm, Gm)
        - torch.einsum("ljm,mik->lkij", Gm, Gm)
    )


def _sectional_from_riemann(R, G, u, v):
    Ruvv = torch.einsum("lkij,k,i,j->l", R, v, u, v)
    area = (u @ G @ u) * (v @ G @ v) - (u @ G @ v) ** 2
    return float((Ruvv @ G @ u) / area)


def _brute_sectional(metric_fn, x, u, v):
    return _sectional_from_riemann(_riemann(metric_fn, x), metric_fn(x), u, v)


def _brute_scalar(metric_fn, x):
    G, R = metric_fn(x), _riemann(metric_fn, x)
    E = torch.linalg.inv(torch.linalg.cholesky(G)).T  # columns: a G-orthonormal frame
    d = G.shape[0]
    return sum(_sectional_from_riemann(R, G, E[:, a], E[:, c]) for a in range(d) for c in range(d) if a != c)


def _brute_all(metric_fn, z, u, v):
    """Sectional curvatures of the planes (u_i, v_i) and scalar curvatures at the points z_i."""
    sec, scal = [], []
    for x, a, c in zip(z, u, v, strict=True):
        x, a, c = torch.tensor(x), torch.tensor(a), torch.tensor(c)
        sec.append(_brute_sectional(metric_fn, x, a, c))
        scal.append(_brute_scalar(metric_fn, x))
    return sec, scal


def _lse_hessian(W, b):
    Wt, bt = torch.tensor(W), torch.tensor(b)
    return hessian(lambda x: torch.logsumexp(Wt @ x + bt, dim=0))


# -- metric and cumulant ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("K", "d"), [(5, 2), (4, 3), (3, 6)])
def test_metric_is_hessian_of_logsumexp(rng, K, d):
    W, b = _head(rng, K, d)
    z = rng.normal(size=(6, d))
    H = torch.stack([_lse_hessian(W, b)(torch.tensor(x)) for x in z]).numpy()
    G = pullback_metric(z, W, b)
    np.testing.assert_allclose(G, H, atol=1e-13)
    np.testing.assert_allclose(pullback_metric_autograd(z, _linear_fn(W, b)), H, atol=1e-13)
    assert np.linalg.matrix_rank(G[0]) == min(d, K - 1)


def test_third_cumulant_is_derivative_of_metric(rng):
    W, b = _head(rng, 5, 3)
    z = rng.normal(size=(4, 3))
    dG = torch.stack([jacfwd(_lse_hessian(W, b))(torch.tensor(x)) for x in z]).numpy()
    T = third_cumulant(z, W, b)
    np.testing.assert_allclose(T, dG, atol=1e-12)
    np.testing.assert_allclose(T, T.transpose(0, 2, 1, 3), atol=1e-15)
    np.testing.assert_allclose(T, T.transpose(0, 3, 2, 1), atol=1e-15)


# -- closed forms: d = K - 1 is the radius-2 sphere ---------------------------------------------------------
@pytest.mark.parametrize("K", [3, 4, 6, 10])
def test_constant_curvature_when_d_is_K_minus_1(rng, K):
    W, b = _head(rng, K, K - 1)
    z = rng.normal(size=(200, K - 1)) * 0.4
    pw = fisher_pointwise(z, W, b)
    assert pw.range_rank == K - 1 and not pw.masked.any()
    np.testing.assert_allclose(pw.scalar_curvature, (K - 1) * (K - 2) / 4, atol=1e-7)
    np.testing.assert_allclose(sectional_curvature(z, W, b, n_planes=3), 0.25, atol=1e-8)
    u, v = rng.normal(size=K - 1), rng.normal(size=(200, K - 1))
    np.testing.assert_allclose(sectional_curvature(z, W, b, planes=(u, v)), 0.25, atol=1e-8)
    auto = fisher_pointwise_autograd(z[:40], _linear_fn(W, b))
    np.testing.assert_allclose(auto.scalar_curvature, (K - 1) * (K - 2) / 4, atol=1e-6)
    np.testing.assert_allclose(sectional_curvature_autograd(z[:40], _linear_fn(W, b), n_planes=2), 0.25, atol=1e-7)


@settings(max_examples=15, deadline=None, derandomize=True)  # reproducible: same examples on every run
@given(K=st.integers(3, 8), seed=st.integers(0, 2**31 - 1), scale=st.floats(0.2, 3.0))
def test_scalar_curvature_closed_form_property(K, seed, scale):
    rng = np.random.default_rng(seed)
    W, b = _head(rng, K, K - 1, scale)
    pw = fisher_pointwise(rng.normal(size=(50, K - 1)), W, b)
    ok = ~pw.masked
    np.testing.assert_allclose(pw.scalar_curvature[ok], (K - 1) * (K - 2) / 4, atol=1e-6)


def test_brute_force_convention_gives_quarter_on_the_sphere(rng):
    # validates the sign/index conventions of the independent Riemann computation used below
    W, b = _head(rng, 4, 3)
    x = torch.tensor(rng.normal(size=3))
    u, v = torch.tensor(rng.normal(size=3)), torch.tensor(rng.normal(size=3))
    assert _brute_sectional(_lse_hessian(W, b), x, u, v) == pytest.approx(0.25, abs=1e-9)


# -- d < K - 1: against the independent Riemann tensor ------------------------------------------------------
@pytest.mark.parametrize(("K", "d"), [(5, 2), (6, 3)])
def test_curvature_matches_independent_riemann_tensor(rng, K, d):
    W, b = _head(rng, K, d, 1.5)
    z, u, v = rng.normal(size=(3, 3, d))
    brute_sec, brute_scal = _brute_all(_lse_hessian(W, b), z, u, v)
    np.testing.assert_allclose(sectional_curvature(z, W, b, planes=(u, v)), brute_sec, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(fisher_pointwise(z, W, b).scalar_curvature, brute_scal, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(
        sectional_curvature_autograd(z, _linear_fn(W, b), planes=(u, v)), brute_sec, rtol=1e-8, atol=1e-9
    )
    # curvature is not constant here: it takes both signs over the latent space (FIELD_NOTES 5)
    wide = fisher_pointwise(rng.normal(size=(500, d)) * 3, W, b).scalar_curvature
    assert np.nanmin(wide) < 0 < np.nanmax(wide)


def test_random_planes_are_orthonormal_samples_of_the_scalar_curvature(rng):
    # the mean of K(e_a, e_b) over uniformly random orthonormal 2-frames is R / (r (r - 1))
    K, d = 6, 3
    W, b = _head(rng, K, d)
    z = np.repeat(rng.normal(size=(1, d)), 4000, axis=0)
    sec = sectional_curvature(z, W, b, n_planes=5, seed=3)
    scal = fisher_pointwise(z[:1], W, b).scalar_curvature[0]
    assert sec.mean() == pytest.approx(scal / (d * (d - 1)), abs=0.05 * np.abs(sec).std() + 1e-9)


def test_autograd_path_nonlinear_head_matches_independent_riemann(rng):
    K, d = 6, 3
    A, c = torch.tensor(rng.normal(size=(4, d))), torch.tensor(rng.normal(size=4))
    Wt, bt = torch.tensor(rng.normal(size=(K, 4))), torch.tensor(rng.normal(size=K))

    def logits(x):
        return torch.tanh(x @ A.T + c) @ Wt.T + bt

    def metric(x):
        J = jacrev(lambda y: logits(y.unsqueeze(0)).squeeze(0))(x)
        p = torch.softmax(logits(x.unsqueeze(0)).squeeze(0), dim=0)
        return J.T @ (torch.diag(p) - torch.outer(p, p)) @ J

    z, u, v = rng.normal(size=(3, 3, d))
    brute_sec, brute_scal = _brute_all(metric, z, u, v)
    np.testing.assert_allclose(sectional_curvature_autograd(z, logits, planes=(u, v)), brute_sec, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(fisher_pointwise_autograd(z, logits).scalar_curvature, brute_scal, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(
        pullback_metric_autograd(z, logits), torch.stack([metric(torch.tensor(x)) for x in z]).numpy(), atol=1e-12
    )


def _mobius_add(x, y):
    """x (+) y on the unit Poincaré ball, in plain torch (geoopt's scripted backward refuses 4th-order vmap)."""
    xy, x2, y2 = (x * y).sum(-1, keepdim=True), (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
    return ((1 + 2 * xy + y2) * x + (1 - x2) * y) / (1 + 2 * xy + x2 * y2)


def _ball_mlr(rng, K, d, mobius_add=_mobius_add):
    """Hyperbolic MLR (Ganea et al. 2018) on the unit Poincaré ball, written for the test."""
    ball = geoopt.PoincareBall()
    P = ball.expmap0(torch.tensor(rng.normal(size=(K, d)) * 0.3))
    A = torch.tensor(rng.normal(size=(K, d)))

    def logits(x):
        y = mobius_add(-P.unsqueeze(0), x.unsqueeze(1))  # (n, K, d)
        lam = 2 / (1 - (P * P).sum(-1))
        an = A.norm(dim=-1)
        return lam * an * torch.asinh(2 * (y * A).sum(-1) / ((1 - (y * y).sum(-1)) * an))

    return ball, logits


def test_ball_mlr_head_curvature_matches_independent_riemann(rng):
    K, d = 5, 2
    ball, logits = _ball_mlr(rng, K, d)

    def metric(x):
        J = jacrev(lambda y: logits(y.unsqueeze(0)).squeeze(0))(x)
        p = torch.softmax(logits(x.unsqueeze(0)).squeeze(0), dim=0)
        return J.T @ (torch.diag(p) - torch.outer(p, p)) @ J

    z = ball.expmap0(torch.tensor(rng.normal(size=(4, d)) * 0.5)).numpy()
    brute = [_brute_scalar(metric, torch.tensor(x)) for x in z[:2]]
    pw = fisher_pointwise_autograd(z, logits, manifold=ball)
    np.testing.assert_allclose(pw.scalar_curvature[:2], brute, rtol=1e-7, atol=1e-8)
    assert pw.range_rank == d
    s = fisher_summary(z, labels=np.array([0, 1, 0, 1]), logits_fn=logits, manifold=ball)
    assert set(s) == SUMMARY_KEYS and all(np.isfinite(list(s.values())))
    # the library path also runs through geoopt's own (scripted) Möbius addition
    _, geoopt_logits = _ball_mlr(np.random.default_rng(0), K, d, mobius_add=ball.mobius_add)
    _, plain_logits = _ball_mlr(np.random.default_rng(0), K, d)
    np.testing.assert_allclose(
        fisher_pointwise_autograd(z, geoopt_logits, manifold=ball).scalar_curvature,
        fisher_pointwise_autograd(z, plain_logits, manifold=ball).scalar_curvature,
        rtol=1e-9,
    )
    with pytest.raises(ValueError, match="outside the Poincaré ball"):
        fisher_pointwise_autograd(np.array([[0.5, 0.0], [1.2, 0.3]]), logits, manifold=ball)
    with pytest.raises(ValueError, match="outside the Poincaré ball"):
        fisher_summary(np.array([[0.5, 0.0], [1.2, 0.3]]), labels=[0, 1], logits_fn=logits, manifold=ball)


def test_cosine_head_on_the_sphere_is_handled_in_the_tangent_space(rng):
    # unit latents, logits s <u, w_k>: radial directions are null; with d - 1 = K - 1 the image is an open
    # piece of the Fisher sphere, so the curvature is again constant
    K, d = 4, 4
    Wd = torch.tensor(rng.normal(size=(K, d)))
    Wd = 3.0 * Wd / Wd.norm(dim=1, keepdim=True)

    def logits(x):
        return x @ Wd.T

    sphere = geoopt.Sphere()
    z = rng.normal(size=(30, d))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    pw = fisher_pointwise_autograd(z, logits, manifold=sphere)
    assert (pw.rank == d - 1).all()
    np.testing.assert_allclose(pw.scalar_curvature, (K - 1) * (K - 2) / 4, atol=1e-8)
    np.testing.assert_allclose(sectional_curvature_autograd(z, logits, manifold=sphere, n_planes=2), 0.25, atol=1e-9)
    G = pullback_metric_autograd(z, logits, manifold=sphere)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", G, z), 0.0, atol=1e-12)  # radial direction is null
    with pytest.raises(ValueError, match="not on the manifold"):
        fisher_pointwise_autograd(2 * z, logits, manifold=sphere)


def test_autograd_matches_closed_form_for_linear_heads(rng):
    for K, d in [(6, 3), (4, 7)]:
        W, b = _head(rng, K, d)
        z = rng.normal(size=(60, d))
        ref, auto = fisher_pointwise(z, W, b), fisher_pointwise_autograd(z, _linear_fn(W, b))
        assert ref.range_rank == auto.range_rank == min(d, K - 1)
        np.testing.assert_allclose(auto.trace, ref.trace, rtol=1e-12)
        np.testing.assert_allclose(auto.logvol, ref.logvol, atol=1e-11)
        np.testing.assert_allclose(auto.scalar_curvature, ref.scalar_curvature, atol=1e-8)
        np.testing.assert_array_equal(auto.rank, ref.rank)


# -- Fisher-Rao distance and geodesics ----------------------------------------------------------------------
def test_pulled_back_great_circle_length_equals_fisher_rao(rng):
    K = 5
    W, b = _head(rng, K, K - 1)
    z0, z1 = rng.normal(size=(2, K - 1))
    p, q = class_probabilities(np.stack([z0, z1]), W, b)
    sp, sq = torch.tensor(np.sqrt(p)), torch.tensor(np.sqrt(q))
    angle = torch.arccos((sp @ sq).clamp(-1, 1))
    Wc = torch.tensor(W - W.mean(0))
    pinv = torch.linalg.pinv(Wc)

    def latent(t):  # the latent whose sqrt-probabilities are the great-circle point at parameter t
        s = (torch.sin((1 - t) * angle) * sp + torch.sin(t * angle) * sq) / torch.sin(angle)
        ell = 2 * torch.log(s) - torch.tensor(b)
        return pinv @ (ell - ell.mean())

    nodes, weights = np.polynomial.legendre.leggauss(40)
    ts = 0.5 * (nodes + 1)
    zs = torch.stack([latent(torch.tensor(t)) for t in ts])
    np.testing.assert_allclose(zs[[0, -1]].numpy(), [z0, z1], atol=0.3)  # sanity: it runs from near z0 to z1
    np.testing.assert_allclose(class_probabilities(latent(torch.tensor(0.0))[None], W, b)[0], p, atol=1e-12)
    vel = torch.stack([jacfwd(latent)(torch.tensor(t)) for t in ts]).numpy()
    G = pullback_metric(zs.numpy(), W, b)
    speed = np.sqrt(np.einsum("ni,nij,nj->n", vel, G, vel))
    length = 0.5 * np.sum(weights * speed)
    assert length == pytest.approx(float(fisher_rao_distance(p, q)), rel=1e-10)
    # the straight latent segment between the same endpoints is no shorter (geodesic minimality)
    seg = z0 + ts[:, None] * (z1 - z0)
    seg_speed = np.sqrt(np.einsum("i,nij,j->n", z1 - z0, pullback_metric(seg, W, b), z1 - z0))
    assert 0.5 * np.sum(weights * seg_speed) >= length - 1e-12


def test_fisher_rao_distance_values(rng):
    p, q = rng.dirichlet(np.ones(6), size=(2, 50))
    fr = fisher_rao_distance(p, q)
    np.testing.assert_allclose(fr, 2 * np.arccos(np.sum(np.sqrt(p * q), axis=1)), rtol=1e-10)
    half = geoopt.Sphere().dist(torch.tensor(np.sqrt(p)), torch.tensor(np.sqrt(q))).numpy()
    np.testing.assert_allclose(fr, 2 * half, rtol=1e-8)  # geoopt: Sphere.dist on sqrt(p) is Fisher-Rao / 2
    assert fisher_rao_distance(p[0], p[0]) == 0.0  # geoopt's clamp would give 8.9e-4 here
    assert fisher_rao_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(math.pi, abs=1e-15)
    assert fisher_rao_distance(p[:, None], p[None]).shape == (50, 50)
    with pytest.raises(ValueError, match="sum to 1"):
        fisher_rao_distance([0.5, 0.6], [0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        fisher_rao_distance([1.5, -0.5], [0.5, 0.5])


# -- rank deficiency, K = 2, masking and bad input ----------------------------------------------------------
def test_rank_deficient_head_works_in_the_range(rng):
    K, d = 4, 7
    W, b = _head(rng, K, d)
    z = rng.normal(size=(50, d))
    pw = fisher_pointwise(z, W, b)
    assert pw.range_rank == K - 1 and (pw.rank == K - 1).all()
    # the quotient of a d > K - 1 head is the (K-1)-dimensional Fisher sphere
    np.testing.assert_allclose(pw.scalar_curvature, (K - 1) * (K - 2) / 4, atol=1e-9)
    G = pullback_metric(z, W, b)
    eig = np.linalg.eigvalsh(G)
    np.testing.assert_allclose(pw.logvol, 0.5 * np.log(eig[:, -(K - 1) :]).sum(axis=1), atol=1e-8)
    # a plane inside the null space {v : W v in span(1)} has no curvature to report
    null = np.linalg.svd(W - W.mean(0))[2][K - 1 :]
    with pytest.raises(ValueError, match="do not span a 2-plane"):
        sectional_curvature(z, W, b, planes=(null[0], null[1]))
    # null components of a plane do not change its curvature
    u, v = rng.normal(size=(2, d))
    shifted = sectional_curvature(z, W, b, planes=(u + 5 * null[0], v))
    np.testing.assert_allclose(sectional_curvature(z, W, b, planes=(u, v)), shifted, atol=1e-10)
    s = fisher_summary(z, W, b, labels=rng.integers(0, K, 50))
    assert s["fisher_rank"] == K - 1


def test_rank_deficient_weights_with_small_d(rng):
    # K = 5, d = 3 but the centred weights have rank 2: the model lives on a 2-dimensional quotient
    K = 5
    base = rng.normal(size=(K, 2))
    W = np.column_stack([base, base[:, 0] + base[:, 1]])
    b = rng.normal(size=K)
    z = rng.normal(size=(20, 3))
    pw = fisher_pointwise(z, W, b)
    assert pw.range_rank == 2
    Q = np.linalg.svd(W - W.mean(0))[2][:2].T  # range coordinates
    ref = fisher_pointwise(z @ Q, W @ Q, b)
    np.testing.assert_allclose(pw.scalar_curvature, ref.scalar_curvature, atol=1e-9)
    np.testing.assert_allclose(pw.logvol, ref.logvol, atol=1e-10)


def test_two_classes(rng):
    W, b = _head(rng, 2, 3)
    z = rng.normal(size=(40, 3))
    pw = fisher_pointwise(z, W, b)
    assert pw.range_rank == 1 and (pw.rank == 1).all()
    np.testing.assert_array_equal(pw.scalar_curvature, 0.0)
    assert np.isfinite(pw.logvol).all()
    with pytest.raises(UndefinedMetricError, match="no 2-planes"):
        sectional_curvature(z, W, b)
    s = fisher_summary(z, W, b, labels=rng.integers(0, 2, 40))
    assert s["fisher_scalar_curvature"] == 0.0 and s["fisher_scalar_curvature_std"] == 0.0
    assert all(np.isfinite(list(s.values())))


def test_constant_classifier_is_undefined(rng):
    W = np.tile(rng.normal(size=(1, 3)), (4, 1))
    with pytest.raises(UndefinedMetricError, match="constant in z"):
        fisher_pointwise(rng.normal(size=(5, 3)), W)


def test_confident_points_are_masked_and_counted(rng):
    K = 10
    W, b = _head(rng, K, K - 1)
    z = rng.normal(size=(400, K - 1)) * np.repeat([1.0, 40.0], 200)[:, None]
    pw = fisher_pointwise(z, W, b)
    pmin = pw.probs.min(axis=1)
    np.testing.assert_array_equal(pw.masked, pmin < 1e-8)
    assert 0.3 < pw.masked.mean() < 0.7
    assert np.isnan(pw.scalar_curvature[pw.masked]).all() and np.isnan(pw.logvol[pw.masked]).all()
    assert np.isfinite(pw.trace).all()
    # accuracy just above the threshold (the error grows like 1e-16 K^2 / min p)
    near = ~pw.masked & (pmin < 1e-6)
    assert near.any()
    np.testing.assert_allclose(pw.scalar_curvature[near], (K - 1) * (K - 2) / 4, atol=1e-6)
    s = fisher_summary(z, W, b, labels=np.repeat(np.arange(K), 40))
    assert s["fisher_masked_fraction"] == pytest.approx(pw.masked.mean())
    assert s["fisher_scalar_curvature"] == pytest.approx((K - 1) * (K - 2) / 4, abs=1e-7)
    assert all(np.isfinite(list(s.values())))
    # all points masked: the masked means are NaN, the rest is still reported
    s = fisher_summary(z[200:], W, b, labels=np.repeat(np.arange(K), 20))
    assert s["fisher_masked_fraction"] == 1.0
    assert np.isnan(s["fisher_logvol_mean"]) and np.isnan(s["fisher_scalar_curvature"])
    assert np.isfinite(s["fisher_trace_mean"]) and np.isfinite(s["fisher_rao_classmean_min"])


def test_summary_keys_and_class_mean_fisher_rao(rng):
    K, d = 3, 2
    W = 8.0 * np.array([[1.0, 0.0], [-0.5, 0.8660254], [-0.5, -0.8660254]])
    labels = np.repeat(np.arange(K), 30)
    z = W[labels] / 8.0 * 2.0 + 0.01 * rng.normal(size=(90, d))  # confident, well separated classes
    s = fisher_summary(z, W, labels=labels, min_prob=0.0)
    assert set(s) == SUMMARY_KEYS
    p = class_probabilities(z, W)
    means = np.stack([p[labels == c].mean(0) for c in range(K)])
    fr = [float(fisher_rao_distance(means[i], means[j])) for i in range(K) for j in range(i + 1, K)]
    assert s["fisher_rao_classmean_min"] == pytest.approx(min(fr), rel=1e-12)
    assert s["fisher_rao_classmean_mean"] == pytest.approx(np.mean(fr), rel=1e-12)
    assert math.pi - 0.1 < s["fisher_rao_classmean_min"] <= math.pi
    pw = fisher_pointwise(z, W, min_prob=0.0)
    assert s["fisher_trace_mean"] == pytest.approx(pw.trace.mean())
    assert s["fisher_logvol_mean"] == pytest.approx(pw.logvol.mean())


def test_bad_input(rng):
    W, b = _head(rng, 4, 3)
    z = rng.normal(size=(5, 3))
    labels = [0, 1, 2, 3, 0]
    with pytest.raises(ValueError, match="NaN"):
        fisher_pointwise(np.where(np.eye(5, 3) > 0, np.nan, z), W, b)
    with pytest.raises(ValueError, match="columns"):
        fisher_pointwise(z[:, :2], W, b)
    with pytest.raises(ValueError, match="at least 2 rows"):
        fisher_pointwise(z, W[:1])
    with pytest.raises(ValueError, match="b has"):
        fisher_pointwise(z, W, b[:3])
    with pytest.raises(ValueError, match="min_prob"):
        fisher_pointwise(z, W, b, min_prob=1.5)
    with pytest.raises(ValueError, match="exactly one"):
        fisher_summary(z, W, b, labels=labels, logits_fn=_linear_fn(W, b))
    with pytest.raises(ValueError, match="exactly one"):
        fisher_summary(z, labels=labels)
    with pytest.raises(ValueError, match="two classes"):
        fisher_summary(z, W, b, labels=[1] * 5)
    with pytest.raises(ValueError, match="shape"):
        fisher_summary(z, W, b, labels=[0, 1])
    with pytest.raises(ValueError, match="float64"):
        Wf = torch.tensor(W, dtype=torch.float32)
        fisher_pointwise_autograd(z, lambda x: x.float() @ Wf.T)
    with pytest.raises(ValueError, match="do not span"):
        sectional_curvature(z, W, b, planes=(np.ones(3), 2 * np.ones(3)))
    with pytest.raises(ValueError, match="degenerate"):
        sectional_curvature_autograd(z, _linear_fn(W, b), planes=(np.ones(3), 2 * np.ones(3)))
    with pytest.raises(ValueError, match="non-finite logits"):
        fisher_pointwise_autograd(z, lambda x: torch.log(x) @ torch.ones(3, 4, dtype=DT))
    with pytest.raises(ValueError, match="supports Euclidean"):
        fisher_pointwise_autograd(z, _linear_fn(W, b), manifold=geoopt.EuclideanStiefel())


# --------------------------------------------------------------------------- closed form vs per-point SVD
def _svd_reference(z, W, b):
    """Trace, log-volume, rank and scalar curvature from the thin SVD of B in the range coordinates of the
    centred W (numpy, written out here): the per-point route fisher_pointwise avoids where it can."""
    Wc = W - W.mean(0)
    _, s, vt = np.linalg.svd(Wc, full_matrices=False)
    Wr = W @ vt[s > 1e-10 * s[0]].T
    logits = z @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = {"trace": [], "logvol": [], "rank": [], "curv": []}
    for pi in p:
        C = Wr - pi @ Wr
        t = pi.argmax()
        C[t] = pi @ (Wr[t] - Wr)  # w_t - W^T p without the cancellation of p_t ~ 1
        B = np.sqrt(pi)[:, None] * C
        U, sv, _ = np.linalg.svd(B, full_matrices=False)
        P = U @ U.T
        sq = np.sqrt(pi)
        out["trace"].append((sv**2).sum())
        out["logvol"].append(np.log(sv).sum())
        out["rank"].append(int((sv > 1e-10 * sv[0]).sum()))
        out["curv"].append(0.25 * (P * (P**2 - np.outer(np.diag(P), np.diag(P))) / np.outer(sq, sq)).sum())
    return {k: np.array(v) for k, v in out.items()}, p


@settings(max_examples=30, deadline=None)
@given(
    K=st.integers(2, 9),
    d=st.integers(1, 10),
    deficient=st.booleans(),
    scale=st.sampled_from([0.3, 1.0, 2.5]),
    seed=st.integers(0, 2**16),
)
def test_closed_form_matches_per_point_svd(K, d, deficient, scale, seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(K, d))
    if deficient and K > 2:
        W[-1] = W[0]  # centred W of rank below min(d, K - 1): the complement R is not empty
    b, z = rng.normal(size=K), scale * rng.normal(size=(40, d))
    got = fisher_pointwise(z, W, b)
    ref, p = _svd_reference(z, W, b)
    well = p.min(1) > 1e-6  # away from the mask threshold, where the SVD route itself is accurate
    assert np.array_equal(got.rank, ref["rank"])
    np.testing.assert_allclose(got.trace, ref["trace"], rtol=1e-10)
    np.testing.assert_allclose(got.logvol[well], ref["logvol"][well], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got.scalar_curvature[well], ref["curv"][well], rtol=1e-10, atol=1e-9)


def test_points_far_from_every_boundary_take_the_svd_route(rng):
    """Logits so large that s_min/s_max of B may fall below the rank tolerance: those points are computed from
    the SVD of B (their rank can drop below r), the others from the closed form, in one call."""
    K, d = 4, 3
    W = 3.0 * rng.normal(size=(K, d))
    z = np.concatenate([0.3 * rng.normal(size=(20, d)), 40.0 * rng.normal(size=(20, d))])
    got = fisher_pointwise(z, W, min_prob=0.0)
    ref, p = _svd_reference(z, W, np.zeros(K))
    assert (ref["rank"] < 3).any()  # the test exercises low per-point ranks
    assert np.array_equal(got.rank, ref["rank"])
    np.testing.assert_allclose(got.trace, ref["trace"], rtol=1e-9)
    near = p.min(1) > 1e-6
    np.testing.assert_allclose(got.logvol[near], ref["logvol"][near], rtol=1e-10)
