"""Analyzer figures against closed forms and independent (loop-based) formulas."""

import math

import numpy as np
import pytest
import torch

from lpc_geom import analyze
from lpc_geom.analysis import collapse, hypercube
from lpc_geom.analysis.entropy import kl_entropy


def simplex_etf(K, d, rng, scale=3.0, offset=0.0):
    """K vertices of a regular simplex (Gram matrix proportional to I - 11^T/K), randomly rotated into
    R^d (d >= K - 1) and translated by `offset`."""
    U, S, _ = np.linalg.svd(np.eye(K) - 1.0 / K)
    base = U[:, : K - 1] * np.sqrt(S[: K - 1])
    Q, _ = np.linalg.qr(rng.normal(size=(d, K - 1)))
    return scale * base @ Q.T + offset


def reference_figures(z, y, W=None, b=None):
    """Straightforward per-sample / per-pair loops of FIELD_NOTES section 2 (float64)."""
    z = np.asarray(z, np.float64)
    classes = np.unique(y)
    K, (N, d) = len(classes), z.shape
    mu = np.array([z[y == c].mean(0) for c in classes])
    muG = mu.mean(0)
    Sw = np.zeros((d, d))
    for i in range(N):
        v = z[i] - mu[np.searchsorted(classes, y[i])]
        Sw += np.outer(v, v)
    Sw /= N
    Sb = sum(np.outer(m - muG, m - muG) for m in mu) / K
    zbar = z.mean(0)
    St = sum(np.outer(v - zbar, v - zbar) for v in z) / N
    out = {
        "sigma_w": np.trace(Sw) / d,
        "sigma_w_rel": np.trace(Sw) / np.trace(St),
        "nc1": np.trace(Sw @ np.linalg.pinv(Sb)) / K,
    }
    norms = [np.linalg.norm(v) for v in z]
    out["norm_cv"] = np.std(norms) / np.mean(norms)
    M = mu - muG
    cn = [np.linalg.norm(m) for m in M]
    out["nc2_equinorm"] = np.std(cn) / np.mean(cn)
    cos = [M[a] @ M[c] / (cn[a] * cn[c]) for a in range(K) for c in range(a + 1, K)]
    out["nc2_equiangular"] = np.std(cos)
    out["nc2_maxangle"] = np.mean([abs(x + 1 / (K - 1)) for x in cos])
    G = np.array([[M[a] @ M[c] / (cn[a] * cn[c]) for c in range(K)] for a in range(K)])
    E = np.eye(K) - 1.0 / K
    out["etf_distance"] = np.linalg.norm(G / np.linalg.norm(G) - E / np.linalg.norm(E))
    R = []
    for i in range(N):
        c = np.searchsorted(classes, y[i])
        dist = [np.linalg.norm(z[i] - mu[q]) for q in range(K)]
        own = dist[c]
        other = min(dist[q] for q in range(K) if q != c)
        if own > 0:
            R.append(other / own)
    out["separation_ratio"] = np.mean(R)
    out["separation_ratio_median"] = np.median(R)
    if W is not None:
        Wc = W[classes]
        out["nc3"] = np.linalg.norm(Wc / np.linalg.norm(Wc) - M / np.linalg.norm(M)) ** 2
        disagree = 0
        for i in range(N):
            ncc = classes[np.argmin([np.linalg.norm(z[i] - m) for m in mu])]
            net = np.argmax(W @ z[i] + (0 if b is None else b))
            disagree += int(ncc != net)
        out["nc4"] = disagree / N
    return out


def noisy_classes(rng, N=300, d=6, K=4, noise=0.7):
    y = rng.integers(0, K, N)
    y[:K] = np.arange(K)
    centres = rng.normal(size=(K, d)) * 2
    return centres[y] + noise * rng.normal(size=(N, d)), y


def test_figures_match_loop_reference(rng):
    z, y = noisy_classes(rng)
    W = rng.normal(size=(4, 6))
    b = rng.normal(size=4)
    rep = analyze(z, y, classifier=(W, b)).to_dict()
    ref = reference_figures(z, y, W, b)
    for key, val in ref.items():
        assert rep[key] == pytest.approx(val, rel=1e-9, abs=1e-12), key


def test_nc1_svd_route_matches_direct_pinv_rank_deficient(rng):
    # d = 3 < K - 1 = 5: Sigma_B has rank 3, the SVD route must keep exactly the non-null directions.
    z, y = noisy_classes(rng, N=400, d=3, K=6)
    ref = reference_figures(z, y)["nc1"]
    assert collapse.nc1(z, y) == pytest.approx(ref, rel=1e-9)
    # d > K - 1: rank K - 1, one null singular value to drop
    z, y = noisy_classes(rng, N=400, d=12, K=5)
    assert collapse.nc1(z, y) == pytest.approx(reference_figures(z, y)["nc1"], rel=1e-9)


@pytest.mark.parametrize("K,d", [(2, 2), (4, 3), (10, 16)])
def test_exact_etf_gives_zero_collapse(rng, K, d):
    mu = simplex_etf(K, d, rng, offset=rng.normal(size=d))
    y = np.repeat(np.arange(K), 25)  # more than k = 20 duplicates per class
    z = mu[y]
    W = mu - mu.mean(0)
    b = -0.5 * (mu**2).sum(1)  # W z + b ranks classes like the distance to mu_c
    rep = analyze(z, y, classifier=(W, b))
    for key in ("sigma_w", "sigma_w_rel", "nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle",
                "etf_distance", "nc3", "nc4"):
        assert abs(rep[key]) < 1e-10, (key, rep[key])
    # every sample on its centre: the separation ratio is x/0 for all, reported, not invented
    assert math.isnan(rep["separation_ratio"]) and "separation_ratio" in rep.undefined
    assert rep["separation_ratio_excluded"] == z.shape[0]
    # duplicates everywhere: entropy finite, every point floored
    assert math.isfinite(rep["entropy"]) and rep["entropy_floored"] == 1.0


def test_nearly_collapsed_etf_separation_closed_form(rng):
    # Samples at mu_c +/- eps * e (symmetric, so the mean stays mu_c): own distance eps exactly,
    # nearest other centre at the simplex edge length (up to O(eps)).
    K, d, eps = 5, 8, 1e-6
    mu = simplex_etf(K, d, rng, scale=1.0)
    e = np.zeros(d)
    e[0] = 1
    z = np.concatenate([mu + eps * e, mu - eps * e])
    y = np.tile(np.arange(K), 2)
    edge = np.linalg.norm(mu[0] - mu[1])
    R = collapse.separation_ratio(z, y)
    assert R.excluded == 0
    assert R.mean == pytest.approx(edge / eps, rel=1e-6)
    assert R.median == pytest.approx(edge / eps, rel=1e-6)


def hypercube_config(rng, K=8, d=5, a=2.5):
    codes = np.unique(rng.choice([-1.0, 1.0], size=(4 * K, d)), axis=0)[:K]
    # make sure each unit takes both signs (otherwise that unit is constant, not bimodal)
    codes[0], codes[1] = 1.0, -1.0
    return a * codes


def test_exact_hypercube(rng):
    mu = hypercube_config(rng)
    K = mu.shape[0]
    y = np.repeat(np.arange(K), 4)
    z = mu[y]
    rep = analyze(z, y, gmm=True)
    assert rep["hypercube_vertex_residual"] < 1e-12
    assert rep["hypercube_bimodality_fraction"] == 1.0
    assert rep["hypercube_sign_agreement"] == 1.0
    assert rep["hypercube_distinct_codes"] == K
    codes = np.sign(mu)
    ham = min(int((codes[i] != codes[j]).sum()) for i in range(K) for j in range(i + 1, K))
    assert rep["hypercube_min_hamming"] == ham
    # two-point units: GMM peaks are separated by many component stds
    assert rep["hypercube_gmm_peak_ratio"] > 100
    assert rep["hypercube_gmm_std"] < 1e-2 * 2.5


def test_hypercube_figures_fail_for_rotated_cube_and_gaussian(rng):
    mu = hypercube_config(rng)
    Q, _ = np.linalg.qr(rng.normal(size=(mu.shape[1], mu.shape[1])))
    y = np.repeat(np.arange(mu.shape[0]), 4)
    rot = analyze((mu @ Q)[y], y)
    assert rot["hypercube_vertex_residual"] > 0.1
    g = rng.normal(size=(4000, 6))
    yg = rng.integers(0, 3, 4000)
    assert analyze(g, yg)["hypercube_bimodality_fraction"] == 0.0
    b = hypercube.bimodality_coefficients(collapse.class_statistics(g, yg))
    assert torch.allclose(b, torch.full_like(b, 1 / 3), atol=0.03)


def test_tetrahedron_is_both_etf_and_cube():
    mu = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    y = np.repeat(np.arange(4), 3)
    rep = analyze(mu[y], y)
    assert rep["etf_distance"] < 1e-12 and rep["hypercube_vertex_residual"] < 1e-12


@pytest.mark.parametrize("d", [2, 4, 8])
def test_gaussian_entropy_within_tenth_of_a_nat(d):
    s = 0.37
    z = np.random.default_rng(d).normal(scale=s, size=(5000, d))
    est = kl_entropy(z)
    truth = 0.5 * math.log(2 * math.pi * math.e * s * s)
    assert abs(est.entropy - truth) < 0.1
    assert abs(est.scale_free - 0.5 * math.log(2 * math.pi * math.e)) < 0.1
    assert est.floored == 0.0 and est.n_used == 5000


def test_entropy_subsample_and_duplicates():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3000, 3))
    est = kl_entropy(z, max_samples=1000, seed=5)
    assert est.n_used == 1000
    assert est == kl_entropy(z, max_samples=1000, seed=5)
    dup = np.repeat(z[:100], 30, axis=0).astype(np.float32)
    est = kl_entropy(dup)
    assert math.isfinite(est.entropy) and est.floored == 1.0
    # explicit floor: log(floor) enters exactly
    est2 = kl_entropy(dup, floor=1e-3)
    assert est2.entropy - est.entropy == pytest.approx(math.log(1e-3 / est.floor), rel=1e-9)


def test_norm_cv_closed_form():
    # norms 1 and 3 in equal numbers: mean 2, std 1
    z = np.array([[1.0, 0], [0, 1], [3, 0], [0, -3]])
    assert collapse.norm_cv(z, [0, 0, 1, 1]) == pytest.approx(0.5)
