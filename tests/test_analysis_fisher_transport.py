"""The Fisher-geometry and Gromov-Wasserstein figures inside ``analyze`` (groups ``fisher`` and ``transport``)."""

import copy
import math
import subprocess
import sys

import geoopt
import numpy as np
import pytest
import torch

from lpc_geom.analysis import CollapseAccumulator, analyze
from lpc_geom.analysis._validation import SmallSubsetWarning
from lpc_geom.analysis.fisher import fisher_summary
from lpc_geom.analysis.fisher.group import FISHER_SAMPLES_AUTOGRAD, FISHER_SAMPLES_LINEAR
from lpc_geom.analysis.transport import gw_etf, gw_hypercube, regular_simplex
from lpc_geom.models.geometry.poincare import HyperbolicMLR

FISHER_KEYS = [
    "fisher_logvol_mean", "fisher_trace_mean", "fisher_scalar_curvature", "fisher_scalar_curvature_std",
    "fisher_masked_fraction", "fisher_rank", "fisher_samples", "fisher_rao_classmean_min", "fisher_rao_classmean_mean",
]  # fmt: skip
GW_KEYS = ["gw_etf", "gw_hypercube"]
MASKED_KEYS = ["fisher_logvol_mean", "fisher_scalar_curvature", "fisher_scalar_curvature_std"]


def _rotation(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _simplex(K):
    """The regular simplex with K vertices in R^(K-1) (coordinates in its own hyperplane), edge sqrt(2)."""
    u, sv, _ = np.linalg.svd(regular_simplex(K), full_matrices=False)
    return (u * sv)[:, : K - 1]


def _blobs(rng, n, d, K, spread=0.5):
    y = np.arange(n) % K
    return rng.normal(size=(K, d))[y] + spread * rng.normal(size=(n, d)), y


# -- keys ----------------------------------------------------------------------------------------------
def test_fisher_keys_only_with_a_classifier_gw_keys_always(rng):
    z, y = _blobs(rng, 300, 4, 5)
    plain = analyze(z, y)
    assert not any(k.startswith("fisher_") for k in plain.to_dict())
    assert list(plain.to_dict())[-2:] == GW_KEYS and "transport" in plain.groups and "fisher" not in plain.groups
    rep = analyze(z, y, classifier=(rng.normal(size=(5, 4)), rng.normal(size=5)))
    assert list(rep.groups["fisher"]) == FISHER_KEYS
    assert all(math.isfinite(rep[k]) for k in FISHER_KEYS), rep.undefined
    assert type(rep["fisher_rank"]) is int and type(rep["fisher_samples"]) is int
    assert rep["fisher_samples"] == 300
    # logits alone give nc4 but no Fisher geometry (which needs the head itself)
    assert "fisher_trace_mean" not in analyze(z, y, logits=rng.normal(size=(300, 5)))
    only = analyze(z, y, classifier=(rng.normal(size=(5, 4)), None), groups=["fisher"])
    assert list(only.to_dict()) == ["N", "K", "d", *FISHER_KEYS]


def test_report_matches_fisher_summary_when_not_subsampled(rng):
    z, y = _blobs(rng, 400, 6, 4, spread=1.0)
    W, b = 0.8 * rng.normal(size=(4, 6)), rng.normal(size=4)
    rep = analyze(z, y, classifier=(W, b))
    ref = fisher_summary(z, W, b, labels=y)
    for key, value in ref.items():
        assert rep[key] == pytest.approx(value, rel=1e-12, abs=1e-14), key


# -- closed forms through analyze ----------------------------------------------------------------------
@pytest.mark.parametrize("K", [3, 4, 6])
def test_scalar_curvature_closed_form_d_equals_k_minus_1(rng, K):
    z, y = _blobs(rng, 240, K - 1, K, spread=0.4)
    rep = analyze(z, y, classifier=(rng.normal(size=(K, K - 1)), rng.normal(size=K)))
    assert rep["fisher_masked_fraction"] == 0.0
    assert rep["fisher_scalar_curvature"] == pytest.approx((K - 1) * (K - 2) / 4, abs=1e-8)
    assert rep["fisher_scalar_curvature_std"] < 1e-8
    assert rep["fisher_rank"] == K - 1


def test_rank_deficient_head_reports_its_rank(rng):
    # d = 8 > K - 1 = 3: the metric has rank 3, the latents parametrise a 3-manifold (the radius-2 sphere's)
    z, y = _blobs(rng, 200, 8, 4)
    rep = analyze(z, y, classifier=(0.5 * rng.normal(size=(4, 8)), None))
    assert rep["fisher_rank"] == 3 < rep.d
    assert rep["fisher_scalar_curvature"] == pytest.approx(3 * 2 / 4, abs=1e-8)


@pytest.mark.parametrize("K,d", [(4, 3), (5, 9), (10, 12)])
def test_exact_etf_class_means_give_gw_etf_zero(rng, K, d):
    etf = _simplex(K)
    means = 3.0 * np.hstack([etf, np.zeros((K, d - (K - 1)))]) @ _rotation(rng, d) + rng.normal(size=d)
    y = np.repeat(np.arange(K), 7)
    rep = analyze(means[y], y)
    assert rep["gw_etf"] == pytest.approx(0.0, abs=1e-14)
    assert rep["etf_distance"] == pytest.approx(0.0, abs=1e-10)
    # not an ETF: the closed form equals the transport module's solver value (the solver's start 1 finds it)
    other = rng.normal(size=(K, d))
    rep = analyze(other[y], y)
    assert rep["gw_etf"] == pytest.approx(gw_etf(other), rel=1e-9, abs=1e-15)
    assert rep["gw_etf"] > 1e-3


def test_exact_hypercube_and_its_codes(rng):
    codes = np.array([[1, 1, -1], [1, -1, 1], [-1, 1, 1], [-1, -1, -1], [1, 1, 1]], float)
    y = np.repeat(np.arange(5), 6)
    z = 0.7 * codes[y] + 1e-3 * rng.normal(size=(30, 3))
    rep = analyze(z, y)
    assert rep["gw_hypercube"] < 1e-5
    means = np.stack([z[y == c].mean(0) for c in range(5)])
    assert rep["gw_hypercube"] == pytest.approx(gw_hypercube(means), rel=1e-9, abs=1e-15)
    exact = analyze(0.7 * codes[y], y)
    assert exact["gw_hypercube"] == pytest.approx(0.0, abs=1e-14)
    assert exact["hypercube_vertex_residual"] == pytest.approx(0.0, abs=1e-14)


def test_etf_on_the_ball_and_the_sphere(rng):
    # a regular simplex centred at the origin has equal pairwise geodesic distances in every geometry
    K = 5
    etf = _simplex(K) @ _rotation(rng, K - 1)
    etf /= np.linalg.norm(etf, axis=1, keepdims=True)
    y = np.repeat(np.arange(K), 4)
    ball = geoopt.PoincareBall(c=1.0)
    assert analyze(0.9 * etf[y], y, manifold=ball)["gw_etf"] == pytest.approx(0.0, abs=1e-12)
    assert analyze(etf[y], y, manifold=geoopt.Sphere())["gw_etf"] == pytest.approx(0.0, abs=1e-12)


# -- degenerate input: documented NaN with a reason ----------------------------------------------------
def test_confident_collapsed_latents_mask_every_point(rng):
    # LPC-like: each class collapsed onto one point far from the decision boundaries, W aligned with it
    K, d = 4, 6
    means = 40.0 * rng.normal(size=(K, d))
    y = np.repeat(np.arange(K), 50)
    z = means[y] + 1e-6 * rng.normal(size=(200, d))
    rep = analyze(z, y, classifier=(means, None))
    assert rep["fisher_masked_fraction"] == 1.0
    for key in MASKED_KEYS:
        assert math.isnan(rep[key]) and "fisher_min_prob" in rep.undefined[key], key
    for key in ("fisher_trace_mean", "fisher_rao_classmean_min", "fisher_rao_classmean_mean"):
        assert math.isfinite(rep[key]) and key not in rep.undefined
    assert rep["fisher_rao_classmean_min"] == pytest.approx(math.pi, abs=1e-6)  # disjoint predictions
    json_null = rep.to_json()
    assert '"fisher_scalar_curvature": null' in json_null
    # a lower mask threshold brings some points back
    assert analyze(z, y, classifier=(means / 200, None), fisher_min_prob=0.0)["fisher_masked_fraction"] == 0.0


def test_constant_classifier_and_coincident_centres(rng):
    z, y = _blobs(rng, 60, 3, 3)
    rep = analyze(z, y, classifier=(np.ones((3, 3)), None))  # all rows equal: the metric is zero
    assert math.isnan(rep["fisher_trace_mean"]) and "constant in z" in rep.undefined["fisher_trace_mean"]
    assert rep["fisher_rao_classmean_min"] == 0.0  # every prediction is uniform
    same = analyze(np.ones((60, 3)), y, classifier=(rng.normal(size=(3, 3)), None))
    assert math.isnan(same["gw_etf"]) and "zero extent" in same.undefined["gw_etf"]
    assert math.isnan(same["gw_hypercube"]) and "one sign code" in same.undefined["gw_hypercube"]
    two = analyze(*_blobs(rng, 40, 3, 2))
    assert two["gw_etf"] == pytest.approx(0.0, abs=1e-15)  # any two points form a simplex


# -- subsampling -----------------------------------------------------------------------------------------
def test_fisher_subsample_is_seeded_and_reported(rng):
    z, y = _blobs(rng, 3000, 5, 6)
    W, b = rng.normal(size=(6, 5)), rng.normal(size=6)
    a = analyze(z, y, classifier=(W, b), groups=["fisher"])
    assert a["fisher_samples"] == FISHER_SAMPLES_LINEAR < 3000
    assert a.to_dict() == analyze(z, y, classifier=(W, b), groups=["fisher"]).to_dict()
    c = analyze(z, y, classifier=(W, b), groups=["fisher"], seed=1)
    assert c["fisher_trace_mean"] != a["fisher_trace_mean"]
    small = analyze(z, y, classifier=(W, b), groups=["fisher"], max_fisher_samples=100)
    assert small["fisher_samples"] == 100
    # the class-mean Fisher-Rao distances use every point, whatever the subsample
    ref = fisher_summary(z, W, b, labels=y)
    for key in ("fisher_rao_classmean_min", "fisher_rao_classmean_mean"):
        assert a[key] == small[key] == pytest.approx(ref[key], rel=1e-12)
    with pytest.raises(ValueError, match="max_fisher_samples"):
        analyze(z, y, classifier=(W, b), max_fisher_samples=0)
    with pytest.raises(ValueError, match="fisher_min_prob"):
        analyze(z, y, classifier=(W, b), fisher_min_prob=1.0)


# -- module heads: autograd --------------------------------------------------------------------------------
def test_module_head_autograd_agrees_with_closed_forms(rng):
    z, y = _blobs(rng, 150, 4, 5)
    torch.manual_seed(0)  # the head's initialisation must not depend on which tests ran before in this process
    lin = torch.nn.Linear(4, 5).double()
    closed = analyze(z, y, classifier=lin)
    assert closed.to_dict() == analyze(z, y, classifier=(lin.weight, lin.bias)).to_dict()
    wrapped = analyze(z, y, classifier=torch.nn.Sequential(lin))  # any other module: called, autograd geometry
    assert "nc3" not in wrapped  # no .weight on the wrapper
    # the autograd route's rounding is relative to the curvature itself (a spread of exactly 0 in closed
    # form comes out of autograd at up to ~1e-10 for some initialisations)
    scale = abs(closed["fisher_scalar_curvature"])
    for key in [*FISHER_KEYS, "nc4"]:
        assert wrapped[key] == pytest.approx(closed[key], rel=1e-8, abs=1e-8 * max(1.0, scale)), key


def test_hyperbolic_mlr_head_on_the_ball(rng):
    torch.manual_seed(0)
    ball = geoopt.PoincareBall(c=1.0)
    K, d = 4, 3
    mlr = HyperbolicMLR(d, K, ball, "manifold")
    before = copy.deepcopy(mlr.state_dict())
    z = ball.expmap0(0.4 * torch.randn(120, d)).detach()
    y = np.arange(120) % K
    rep = analyze(z, y, manifold=ball, classifier=mlr)
    assert all(torch.equal(before[k], v) for k, v in mlr.state_dict().items())  # the caller's module is untouched
    assert next(mlr.parameters()).dtype == torch.float32
    # d = K - 1 and a generic head: the image is an open piece of the radius-2 sphere
    assert rep["fisher_scalar_curvature"] == pytest.approx((K - 1) * (K - 2) / 4, abs=1e-6)
    assert rep["fisher_rank"] == K - 1
    # nc4 from the head's own logits: equal to nc4 computed from logits passed explicitly
    with torch.no_grad():
        logits = copy.deepcopy(mlr).double()(z.double())
    assert rep["nc4"] == analyze(z, y, manifold=ball, logits=logits)["nc4"]
    assert rep.to_dict().keys() >= {"nc3", "nc4", *FISHER_KEYS, *GW_KEYS}
    assert rep["fisher_samples"] == min(120, FISHER_SAMPLES_AUTOGRAD)


def test_sphere_latents_with_a_linear_head(rng):
    # unit latents in R^K and a generic K x K head: the restriction to S^{K-1} has rank K - 1
    K = 4
    u = rng.normal(size=(100, K))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y = np.arange(100) % K
    rep = analyze(u, y, manifold=geoopt.Sphere(), classifier=(rng.normal(size=(K, K)), rng.normal(size=K)))
    assert rep["fisher_rank"] == K - 1
    assert rep["fisher_scalar_curvature"] == pytest.approx((K - 1) * (K - 2) / 4, abs=1e-6)


def test_autograd_curvature_default_skip_and_override(rng):
    z, y = _blobs(rng, 40, 40, 10)  # K * d = 400 > 320
    head = torch.nn.Sequential(torch.nn.Linear(40, 10))
    rep = analyze(z, y, classifier=head, groups=["fisher"])
    assert math.isnan(rep["fisher_scalar_curvature"])
    assert "fisher_curvature=True" in rep.undefined["fisher_scalar_curvature"]
    assert math.isfinite(rep["fisher_trace_mean"])
    forced = analyze(z, y, classifier=head, groups=["fisher"], fisher_curvature=True)
    assert forced["fisher_scalar_curvature"] == pytest.approx(9 * 8 / 4, abs=1e-6)
    W = np.ones((10, 40)) + np.eye(10, 40)
    off = analyze(z, y, classifier=(W, None), groups=["fisher"], fisher_curvature=False)
    assert "not requested" in off.undefined["fisher_scalar_curvature"]


def test_bad_classifier_modules(rng):
    z, y = _blobs(rng, 30, 3, 3)

    class Pair(torch.nn.Module):
        def forward(self, x):
            return x, x

    class Nan(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"), dtype=x.dtype)

    with pytest.raises(TypeError, match="logits tensor"):
        analyze(z, y, classifier=Pair())
    with pytest.raises(ValueError, match="NaN/Inf logits"):
        analyze(z, y, classifier=Nan())
    with pytest.raises(ValueError, match="at least 2"):
        analyze(z, y, classifier=torch.nn.Linear(3, 1))


# -- streaming and exports ------------------------------------------------------------------------------
def test_gw_figures_stream(rng):
    z, y = _blobs(rng, 500, 6, 7)
    full = analyze(z.astype(np.float32), y)
    acc = CollapseAccumulator()
    for s in range(0, 500, 64):
        acc.update(z[s : s + 64].astype(np.float32), y[s : s + 64])
    streamed = acc.report()
    for key in GW_KEYS:
        assert streamed[key] == pytest.approx(full[key], rel=1e-9), key
    assert not any(k.startswith("fisher_") for k in streamed.to_dict())


def test_fisher_and_transport_exports_are_lazy():
    code = (
        "import sys, lpc_geom.analysis as A; print('ot' in sys.modules);"
        "from lpc_geom.analysis import fisher_summary, gw_distance, transport_summary;"
        "print('ot' in sys.modules, 'fisher_pointwise' in dir(A), 'compare' in A.__all__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True", "True"]


def test_lazy_export_lists_match_the_modules():
    """The names lpc_geom.analysis resolves lazily are exactly the public names of fisher.py / transport.py."""
    import lpc_geom.analysis as A
    from lpc_geom.analysis import fisher, transport

    assert sorted(A._FISHER) == sorted(fisher.__all__)
    assert sorted(A._TRANSPORT) == sorted(transport.__all__)


def test_thread_count_restored(rng):
    # the pointwise Fisher figures run on one intra-op thread; the caller's setting must come back
    z, y = _blobs(rng, 50, 3, 3)
    torch.set_num_threads(2)
    try:
        analyze(z, y, classifier=(rng.normal(size=(3, 3)), None), groups=["fisher"])
        assert torch.get_num_threads() == 2
        analyze(z, y, classifier=(np.ones((3, 3)), None), groups=["fisher"])  # the UndefinedMetricError path
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_fisher_summary_is_the_report_group_on_every_point(rng):
    # one implementation: without a subsample the pointwise figures are the report's to the last bit, and
    # the small-subset note is the report's, naming the summary's own option
    z, y = _blobs(rng, 300, 5, 3, spread=1.0)
    W, b = 0.8 * rng.normal(size=(3, 5)), rng.normal(size=3)
    rep = analyze(z, y, classifier=(W, b), groups="fisher")
    ref = fisher_summary(z, W, b, labels=y)
    assert list(ref) == [k for k in FISHER_KEYS if k != "fisher_samples"]
    for key in ref:
        if not key.startswith("fisher_rao"):
            assert ref[key] == rep[key], key
    confident = 60.0 * np.eye(3)
    with pytest.warns(SmallSubsetWarning, match="min_prob = 1e-08") as record:
        fisher_summary(np.vstack([5.0 * np.eye(3)[y], np.zeros((3, 3))]), confident, labels=np.r_[y, 0, 1, 2])
    assert "fisher_min_prob" not in str(record[0].message)
