"""Manifold-aware analysis: distances, charts, centres, the c -> 0 limit, the sphere."""

import math

import geoopt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lpc_geom import analyze
from lpc_geom.analysis import geometry as G
from lpc_geom.analysis.entropy import kl_entropy


def blobs(rng, N=240, d=5, K=4, spread=0.15, radius=0.6):
    y = np.arange(N) % K
    centres = rng.normal(size=(K, d))
    centres *= radius / np.linalg.norm(centres, axis=1, keepdims=True)
    return centres[y] + spread * rng.normal(size=(N, d)) / math.sqrt(d), y


@pytest.mark.parametrize("c", [0.3, 1.0, 2.0])
def test_poincare_distance_matches_arcosh_formula_and_geoopt(rng, c):
    ball = geoopt.PoincareBall(c=c)
    geom = G.geometry_from_manifold(ball)
    cc = -geom.k
    x = torch.from_numpy(rng.normal(size=(200, 4)) * 0.3 / math.sqrt(cc))
    y = torch.from_numpy(rng.normal(size=(200, 4)) * 0.3 / math.sqrt(cc))
    inside = (cc * (x * x).sum(1) < 0.95) & (cc * (y * y).sum(1) < 0.95)
    x, y = x[inside], y[inside]
    num = 2 * cc * ((x - y) ** 2).sum(1)
    den = (1 - cc * (x * x).sum(1)) * (1 - cc * (y * y).sum(1))
    arcosh = torch.acosh(1 + num / den) / math.sqrt(cc)
    # reported distances are geoopt's divided by lambda_0 = 2
    assert torch.allclose(2 * geom.dist(x, y), arcosh, rtol=1e-10)
    assert torch.allclose(2 * geom.dist(x, y), ball.dist(x, y), rtol=1e-5)
    assert torch.allclose(geom.to_chart(x), ball.logmap0(x), rtol=1e-6)
    assert torch.allclose(2 * geom.origin_norm(x), ball.dist0(x), rtol=1e-6)
    assert torch.allclose(geom.from_chart(geom.to_chart(x)), x, atol=1e-14)


def test_projected_sphere_and_sphere_distances(rng):
    sp = geoopt.SphereProjection(k=0.8)
    geom = G.geometry_from_manifold(sp)
    x = torch.from_numpy(rng.normal(size=(100, 3)))
    y = torch.from_numpy(rng.normal(size=(100, 3)))
    assert torch.allclose(2 * geom.dist(x, y), sp.dist(x, y), rtol=1e-5)
    sphere = G.geometry_from_manifold(geoopt.Sphere())
    xs, ys = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    assert torch.allclose(sphere.dist(xs, ys), torch.acos((xs * ys).sum(1).clamp(-1, 1)), atol=1e-7)
    # tiny distances stay accurate (half-angle form, no arccos(1 - tiny))
    e = torch.tensor([[1.0, 0, 0]], dtype=torch.float64)
    f = torch.tensor([[math.cos(1e-9), math.sin(1e-9), 0]], dtype=torch.float64)
    assert float(sphere.dist(e, f)) == pytest.approx(1e-9, rel=1e-6)


@pytest.mark.parametrize("kind", ["poincare", "sphereproj"])
def test_curved_report_tends_to_euclidean(rng, kind):
    z, y = blobs(rng)
    W = rng.normal(size=(4, 5))
    eu = analyze(z, y, classifier=(W, None), k=5).to_dict()
    gaps = []
    for c in (1e-1, 1e-3, 1e-5):
        man = geoopt.PoincareBall(c=c) if kind == "poincare" else geoopt.SphereProjection(k=c)
        cur = analyze(z, y, manifold=man, classifier=(W, None), k=5).to_dict()
        assert cur.keys() == eu.keys()
        gap = max(abs(cur[k] - eu[k]) / max(abs(eu[k]), 1e-3) for k in eu if isinstance(eu[k], float))
        gaps.append(gap)
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-4


def test_brute_force_knn_matches_kdtree(rng):
    z = torch.from_numpy(rng.normal(size=(600, 6)))
    z[100:130] = z[99]  # duplicates: exactly zero distances on both routes
    eu = G.kth_neighbour_distance(G.Geometry("euclidean"), z, 7)
    brute = G.kth_neighbour_distance(G.Geometry("stereographic", 0.0), z, 7)
    assert torch.allclose(eu, brute, rtol=1e-12, atol=0)
    assert int((brute[99:130] == 0).sum()) == 31


def test_class_means_exact_for_identical_points():
    u = torch.full((7, 3), 0.1, dtype=torch.float64)
    means, counts = G.class_means(u, torch.zeros(7, dtype=torch.long), 1)
    assert torch.equal(means[0], u[0]) and int(counts[0]) == 7


def test_distances_to_centres_keep_tiny_own_distance(rng):
    centres = torch.from_numpy(1000.0 + rng.normal(size=(3, 8)))
    codes = torch.arange(30) % 3
    z = centres[codes] + 1e-9 * torch.from_numpy(rng.normal(size=(30, 8)))
    D = G.distances_to_centres(G.Geometry("euclidean"), z, centres, codes)
    own = (z - centres[codes]).norm(dim=1)
    assert torch.allclose(D.gather(1, codes[:, None]).squeeze(1), own, rtol=1e-12)


def test_sphere_analysis(rng):
    # K = d + 1 unit vectors of a regular simplex on S^{d-1}: an ETF on the sphere
    d = 4
    E = np.eye(d + 1) - 1.0 / (d + 1)
    U, S, _ = np.linalg.svd(E)
    mu = U[:, :d] * np.sqrt(S[:d])
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    y = np.repeat(np.arange(d + 1), 30)
    noise = 0.01 * rng.normal(size=(len(y), d))
    z = mu[y] + noise
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    rep = analyze(z.astype(np.float32), y, manifold=geoopt.Sphere())
    assert rep.geometry == "sphere"
    assert math.isnan(rep["norm_cv"]) and "origin" in rep.undefined["norm_cv"]
    assert rep["etf_distance"] < 0.01 and rep["nc1"] < 1e-3
    assert rep["separation_ratio"] > 50
    # extrinsic centre and arccos distances, by hand for one sample
    m = z[y == y[0]].mean(0)
    m /= np.linalg.norm(m)
    own = math.acos(np.clip(z[0] @ m, -1, 1))
    assert own == pytest.approx(
        float(G.Geometry("sphere").dist(torch.from_numpy(z[:1]), torch.from_numpy(m[None]))), rel=1e-9
    )
    # entropy uses the intrinsic dimension d - 1
    assert kl_entropy(z, manifold=geoopt.Sphere()).dim == d - 1


def test_sphere_class_without_mean_direction_is_reported(rng):
    z = np.array([[1.0, 0], [-1.0, 0], [0, 1.0], [0, 1.0]])
    rep = analyze(z, [0, 0, 1, 1], manifold=geoopt.Sphere(), k=1)
    assert math.isnan(rep["separation_ratio"]) and "extrinsic mean" in rep.undefined["separation_ratio"]


def test_poincare_compact_classes_match_frechet_to_second_order(rng):
    # For a compact class the tangent-at-origin mean is within O(spread^2) of the Fréchet mean.
    ball = geoopt.PoincareBall(c=1.0)
    geom = G.geometry_from_manifold(ball)
    centre = torch.tensor([[0.5, -0.3, 0.2]], dtype=torch.float64)
    for spread, tol in ((1e-2, 1e-3), (1e-3, 1e-5)):
        v = spread * torch.from_numpy(rng.normal(size=(200, 3)))
        pts = ball.expmap(centre.expand(200, 3), v)
        mean_chart = geom.to_chart(pts).mean(0, keepdim=True)
        ours = geom.from_chart(mean_chart)
        # Fréchet mean by Riemannian gradient descent (reference only)
        m = ours.clone()
        for _ in range(15):
            m = ball.expmap(m, ball.logmap(m.expand(200, 3), pts).mean(0, keepdim=True))
        assert float(geom.dist(ours, m)) < tol


def test_unsupported_manifolds():
    with pytest.raises(TypeError, match="unsupported manifold"):
        analyze(np.eye(3), [0, 1, 1], manifold=geoopt.Stiefel())
    with pytest.raises(ValueError, match="subspace"):
        analyze(np.eye(3), [0, 1, 1], manifold=geoopt.Sphere(intersection=torch.eye(3)[:, :2]))


def reference_separation(z, y, centres, dist):
    R = []
    for i in range(len(y)):
        dd = [dist(z[i], c) for c in centres]
        own = dd[y[i]]
        R.append(min(dd[q] for q in range(len(centres)) if q != y[i]) / own)
    return np.mean(R)


def test_sphere_and_ball_separation_match_loop_reference(rng):
    z, y = blobs(rng, N=120, d=4, K=3, spread=0.3)
    # sphere: extrinsic centres, arccos distances
    zs = z / np.linalg.norm(z, axis=1, keepdims=True)
    cs = np.array([zs[y == c].mean(0) for c in range(3)])
    cs /= np.linalg.norm(cs, axis=1, keepdims=True)
    ref = reference_separation(zs, y, cs, lambda a, b: math.acos(np.clip(a @ b, -1, 1)))
    assert analyze(zs, y, manifold=geoopt.Sphere(), k=5)["separation_ratio"] == pytest.approx(ref, rel=1e-6)
    # ball (c = 1.3): tangent-at-origin mean, arcosh distance / 2
    c = 1.3
    ball = geoopt.PoincareBall(c=c)
    cc = float(-G.geometry_from_manifold(ball).k)
    zb = z * 0.5 / math.sqrt(cc)
    t = torch.from_numpy(zb)
    chart = ball.logmap0(t).double().numpy()
    cb = ball.expmap0(torch.from_numpy(np.array([chart[y == q].mean(0) for q in range(3)]))).double().numpy()

    def arcosh_dist(a, b):
        x = 1 + 2 * cc * np.sum((a - b) ** 2) / ((1 - cc * a @ a) * (1 - cc * b @ b))
        return math.acosh(x) / math.sqrt(cc) / 2

    ref = reference_separation(zb, y, cb, arcosh_dist)
    assert analyze(zb, y, manifold=ball, k=5)["separation_ratio"] == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("geom", [G.Geometry("stereographic", -1.7), G.Geometry("stereographic", 0.6),
                                  G.Geometry("sphere")])
def test_curved_knn_matches_full_distance_matrix(rng, geom):
    z = torch.from_numpy(rng.normal(size=(150, 4)) * 0.3)
    if geom.kind == "sphere":
        z = z / z.norm(dim=1, keepdim=True)
    if geom.k < 0:
        z = z * 0.5  # on the ball (|k| |z|^2 < 1): outside it the distance formula is not a distance
    z[40:45] = z[39]
    full = geom.dist(z[:, None, :], z[None, :, :])
    full.fill_diagonal_(float("inf"))
    ref = torch.sort(full, dim=1).values[:, 4]
    got = G.kth_neighbour_distance(geom, z, 5)
    assert torch.allclose(got, ref, rtol=1e-9, atol=0)
    assert bool((got[39:45] == 0).all())


def _tight_far_clusters(rng, N, d, dtype, K=2, sep=1e4, noise=1e-5):
    """K classes ``sep`` apart on the first axis, isotropic noise ``noise``: LPC-like latents."""
    y = np.arange(N) % K
    z = np.zeros((N, d))
    z[:, 0] = sep * y
    z += noise * rng.normal(size=(N, d))
    return z.astype(dtype)


@pytest.mark.parametrize("d", [32, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_knn_exact_on_tight_far_apart_clusters(rng, d, dtype):
    """The brute-force path (d > 16) agrees with cKDTree (direct differences) where the Gram identity on
    globally centred points cannot resolve the within-class distances, and so does the entropy."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma, gammaln

    N, k = 1200, 20
    z = _tight_far_clusters(rng, N, d, dtype)
    z64 = z.astype(np.float64)  # the values the analyzers see
    ref = cKDTree(z64).query(z64, k=k + 1)[0][:, k]
    got = G.kth_neighbour_distance(G.Geometry("euclidean"), torch.from_numpy(z64), k).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=0)
    # float32 stores the 1e4 offset to ~1e-3 but the other units near 0 finely: the default floor (the
    # input's resolution) would floor every radius, so an explicit one lets the distances decide
    est = kl_entropy(z, k=k, floor=1e-12)
    assert est.floored == 0.0
    exact = (digamma(N) - digamma(k) + 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1)) / d + np.log(ref).mean()
    assert est.entropy == pytest.approx(exact, abs=1e-6)


def test_knn_issue_reproducer_entropy():
    """Issue 15: two classes 1e4 apart, noise 1e-5, d = 32, N = 3000, k = 20: exact -9.942 nats/dim."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma, gammaln

    N, d, k = 3000, 32, 20
    z = _tight_far_clusters(np.random.default_rng(0), N, d, np.float64)
    ref = cKDTree(z).query(z, k=k + 1)[0][:, k]
    exact = (digamma(N) - digamma(k) + 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1)) / d + np.log(ref).mean()
    assert exact == pytest.approx(-9.942, abs=1e-3)
    assert kl_entropy(z, k=k).entropy == pytest.approx(exact, abs=1e-6)


@pytest.mark.parametrize("geom", [G.Geometry("stereographic", -1.0), G.Geometry("stereographic", 0.5),
                                  G.Geometry("sphere")])
def test_curved_knn_exact_on_tight_clusters(rng, geom):
    """Tight clusters away from the mean on curved models: the rounding bounds hold after the weights
    of the stereographic ranking, and re-centring recovers the exact distances."""
    d, N, k = 20, 400, 5
    y = np.arange(N) % 4
    centres = rng.normal(size=(4, d))
    centres *= 0.6 / np.linalg.norm(centres, axis=1, keepdims=True)
    z = torch.from_numpy(centres[y] + 1e-9 * rng.normal(size=(N, d)))
    if geom.kind == "sphere":
        z = z / z.norm(dim=1, keepdim=True)
    full = geom.dist(z[:, None, :], z[None, :, :])
    full.fill_diagonal_(float("inf"))
    ref = torch.sort(full, dim=1).values[:, k - 1]
    got = G.kth_neighbour_distance(geom, z, k)
    assert torch.allclose(got, ref, rtol=1e-7, atol=0)


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    K=st.integers(1, 4),
    d=st.integers(17, 40),
    k=st.integers(1, 6),
    log_sep=st.floats(-2.0, 8.0),
    log_noise=st.floats(-12.0, 0.0),
    kind=st.sampled_from(["euclidean", "flat", "ball"]),
)
def test_knn_matches_direct_differences_property(seed, K, d, k, log_sep, log_noise, kind):
    """Any mix of cluster offsets and spreads: the brute force equals the sorted direct differences."""
    r = np.random.default_rng(seed)
    N = 60
    y = np.arange(N) % K
    z = 10.0**log_sep * r.normal(size=(K, d))[y] + 10.0**log_noise * r.normal(size=(N, d))
    z[5:8] = z[4]  # exact duplicates as well
    geom = {"euclidean": G.Geometry("euclidean"), "flat": G.Geometry("stereographic", 0.0),
            "ball": G.Geometry("stereographic", -1.0)}[kind]
    t = torch.from_numpy(z)
    if kind == "ball":
        t = t / (1.0 + t.norm(dim=1, keepdim=True))  # inside the unit ball
    full = geom.dist(t[:, None, :], t[None, :, :])
    full.fill_diagonal_(float("inf"))
    ref = torch.sort(full, dim=1).values[:, k - 1]
    got = G.kth_neighbour_distance(geom, t, k)
    assert torch.allclose(got, ref, rtol=1e-7, atol=0)
    assert bool((got[4:8] == 0).all()) or k > 3
